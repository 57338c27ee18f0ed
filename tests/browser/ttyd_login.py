#!/usr/bin/env python3
"""Use a ttyd web terminal the way its users do: in a real (headless) Chromium.

usage: ttyd_login.py URL [--login USER] [--basic-auth USER] [--command CMD]
                         [--expect REGEX]... [--screenshot FILE.png] [--timeout SECONDS]
                         [--window-size WIDTHxHEIGHT] [--chromium PATH] [--chromedriver PATH]

Opens URL, answers ttyd's own HTTP basic credential prompt when --basic-auth is given
(after checking that the page really asks for it), waits for the terminal, logs in
through the page when --login is given (the guest's `login` prompt: user, then
password), types CMD, and waits until every --expect regex matches a line of the
output that follows the typed command and a shell prompt is back. Keys reach the page
as keyboard events, through xterm.js's input element, as when a person types.

Passwords come from the environment, never the command line: TTYD_LOGIN_PASSWORD
for --login, TTYD_BASIC_PASSWORD for --basic-auth. They are never printed.

Prints the terminal's text to standard output and saves a screenshot. Exit 0 when
everything was seen, 1 otherwise (with the terminal's text and a screenshot named
*-failure.png beside --screenshot).
"""
import argparse
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from chromium import Failed, add_browser_args, start_browser

# The terminal's text, whichever way this ttyd build exposes it: the xterm.js buffer
# (ttyd 1.6+ sets window.term), else the DOM renderer's rows, else the accessibility
# tree, else the page text.
READ_TERMINAL = """
const t = window.term;
if (t && t.buffer && t.buffer.active) {
  const b = t.buffer.active, lines = [];
  for (let i = 0; i < b.length; i++) {
    const l = b.getLine(i);
    lines.push(l ? l.translateToString(true) : "");
  }
  return lines.join("\\n");
}
for (const sel of [".xterm-rows", ".xterm-accessibility-tree"]) {
  const e = document.querySelector(sel);
  if (e && e.children.length) {
    return Array.from(e.children).map((r) => r.textContent).join("\\n");
  }
}
return document.body ? document.body.innerText : "";
"""

PROMPT = re.compile(r"[$#]\s*$")


class Page:
    def __init__(self, driver, secrets, timeout):
        self.driver = driver
        self.secrets = [s for s in secrets if s]
        self.deadline = time.monotonic() + timeout

    def text(self):
        """The terminal's lines, without the empty rows below the last output."""
        try:
            text = self.driver.execute_script(READ_TERMINAL) or ""
        except WebDriverException:
            return ""
        return "\n".join(line.rstrip() for line in text.splitlines()).rstrip("\n")

    def redacted(self, text):
        for s in self.secrets:
            text = text.replace(s, "***")
        return text

    def last_line(self):
        lines = [line for line in self.text().splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def wait(self, what, ready, nudge=None, every=15.0):
        """Polls ready() until it holds; types `nudge` every `every` seconds meanwhile."""
        nudged = time.monotonic()
        while True:
            if ready():
                return
            if time.monotonic() > self.deadline:
                raise Failed(f"timed out waiting for {what}")
            if nudge is not None and time.monotonic() - nudged > every:
                self.type(nudge)
                nudged = time.monotonic()
            time.sleep(0.5)

    def type(self, *keys):
        ActionChains(self.driver).send_keys(*keys).perform()


def check_challenge(url):
    """ttyd with a credential answers 401 and asks for Basic auth before anything else."""
    try:
        urllib.request.urlopen(url, timeout=30)
    except urllib.error.HTTPError as e:
        challenge = e.headers.get("WWW-Authenticate", "")
        if e.code == 401 and challenge.lower().startswith("basic"):
            return
        raise Failed(f"expected 401 with a Basic challenge, got {e.code} {challenge!r}")
    except (urllib.error.URLError, OSError) as e:
        raise Failed(f"opening {url}: {e}")
    raise Failed("the page opened without credentials, but --basic-auth was given")


def log_in(page, user, password):
    page.wait(
        "the login prompt",
        lambda: re.search(r"login:\s*$", page.last_line()),
        nudge=Keys.ENTER,
    )
    page.type(user, Keys.ENTER)
    page.wait("the password prompt", lambda: page.last_line().rstrip().endswith("assword:"))
    page.type(password, Keys.ENTER)

    def shell_or_refused():
        if "Login incorrect" in page.text():
            raise Failed(f"logging in as {user} failed: Login incorrect")
        return PROMPT.search(page.last_line())

    page.wait("a shell prompt after logging in", shell_or_refused)


def run_command(page, command, expect):
    page.type(command, Keys.ENTER)
    patterns = [re.compile(p, re.M) for p in expect]
    echo_end = command[-20:]

    def output():
        # What follows the last line that ends the echo of the typed command (a long
        # command wraps over several lines).
        lines = page.text().splitlines()
        for i in range(len(lines) - 1, -1, -1):
            if lines[i].rstrip().endswith(echo_end):
                return "\n".join(lines[i + 1:])
        return ""

    def done():
        out = output()
        return all(p.search(out) for p in patterns) and PROMPT.search(page.last_line())

    page.wait(f"the output of {command!r} to match {expect}", done)
    return output()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--login", metavar="USER")
    ap.add_argument("--basic-auth", metavar="USER")
    ap.add_argument("--command")
    ap.add_argument("--expect", action="append", default=[], metavar="REGEX")
    ap.add_argument("--screenshot", default="ttyd-terminal.png")
    ap.add_argument("--timeout", type=float, default=300)
    add_browser_args(ap, window_size="1000x560")
    args = ap.parse_args()
    login_password = os.environ.get("TTYD_LOGIN_PASSWORD", "")
    basic_password = os.environ.get("TTYD_BASIC_PASSWORD", "")
    if args.login and not login_password:
        ap.error("--login needs TTYD_LOGIN_PASSWORD in the environment")
    if args.basic_auth and not basic_password:
        ap.error("--basic-auth needs TTYD_BASIC_PASSWORD in the environment")

    driver = start_browser(args)
    page = Page(driver, [login_password, basic_password], args.timeout)
    try:
        if args.basic_auth:
            check_challenge(args.url)
            # Answer the browser's own credential challenge the way a user's answer
            # reaches it: credentials for the page's protection space, which the
            # browser then keeps in its auth cache for every request of the page
            # (/token and the WebSocket included). Chromium shows no dialog headless;
            # credentials in a top-level navigation's URL fill the same cache.
            parts = urllib.parse.urlsplit(args.url)
            authed = parts._replace(
                netloc="%s:%s@%s" % (
                    urllib.parse.quote(args.basic_auth, safe=""),
                    urllib.parse.quote(basic_password, safe=""),
                    parts.netloc,
                )
            )
            driver.get(urllib.parse.urlunsplit(authed))
        else:
            driver.get(args.url)
        page.wait("the terminal to appear", lambda: driver.find_elements(By.CSS_SELECTOR, ".xterm"))
        driver.find_element(By.CSS_SELECTOR, ".xterm").click()
        if args.login:
            log_in(page, args.login, login_password)
        else:
            page.wait("a shell prompt", lambda: PROMPT.search(page.last_line()), nudge=Keys.ENTER)
        output = ""
        if args.command:
            output = run_command(page, args.command, args.expect)
        driver.save_screenshot(args.screenshot)
        print(page.redacted(page.text()).rstrip())
        print("--- command output ---")
        print(page.redacted(output).rstrip())
        return 0
    except Failed as e:
        failure = os.path.splitext(args.screenshot)[0] + "-failure.png"
        try:
            driver.save_screenshot(failure)
        except WebDriverException:
            pass
        print(page.redacted(page.text()).rstrip())
        print(f"ttyd_login.py: {e} (screenshot: {failure})", file=sys.stderr)
        return 1
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
