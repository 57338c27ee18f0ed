#!/usr/bin/env python3
"""Use a noVNC web desktop the way its users do: in a real (headless) Chromium.

usage: novnc_desktop.py URL [--screenshot FILE.png] [--expect-refused] [--timeout SECONDS]
                        [--min-colours N] [--expect-top-panel]
                        [--window-size WIDTHxHEIGHT] [--chromium PATH]
                        [--chromedriver PATH]

Opens noVNC's page (URL, e.g. http://127.0.0.1:PORT/vnc.html), connects, waits for
noVNC's password dialog and answers it with NOVNC_PASSWORD from the environment (never
the command line; never printed). Then:

- by default, waits until noVNC is connected and the desktop's canvas shows something:
  its pixels are compared against a blank canvas of the same size (one colour), and at
  least 1% of them must differ, in more than two colours (a window, not an empty
  root window). With --min-colours N, waits until the canvas shows at least N distinct
  colours (a full desktop's panels and icons, not an xterm on a plain root window). With --expect-top-panel, waits until a panel shows along the top edge: one
  colour covers most of the top 16 rows and it is not the screen's most common colour
  (twm and an xterm on a plain root window leave the top edge the root's colour).
  Saves a screenshot of the page.
- with --expect-refused, waits until noVNC reports that authentication failed
  ("Authentication failed" or the server's "Authentication failure"), and
  fails if it ever shows the desktop (connected state or a non-blank canvas).

Prints what it saw as `key: value` lines. Exit 0 when the expectation held, 1
otherwise (with a screenshot named *-failure.png beside --screenshot).
"""
import argparse
import os
import sys
import time

from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By

from chromium import Failed, add_browser_args, start_browser

# The desktop canvas's size and how its pixels spread: the share of the most common
# colour and the number of distinct colours (sampled on a grid: every 4th pixel).
CANVAS_STATS = """
const c = document.querySelector('#noVNC_container canvas') || document.querySelector('canvas');
if (!c || !c.width || !c.height) return {width: 0, height: 0, dominant: 1, colours: 0};
let d;
try { d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; }
catch (e) { return {width: c.width, height: c.height, dominant: 1, colours: 0, error: String(e)}; }
const counts = new Map();
let n = 0;
for (let y = 0; y < c.height; y += 4) {
  for (let x = 0; x < c.width; x += 4) {
    const i = (y * c.width + x) * 4;
    const k = (d[i] << 16) | (d[i + 1] << 8) | d[i + 2];
    counts.set(k, (counts.get(k) || 0) + 1);
    n++;
  }
}
let top = 0, topKey = -1;
for (const [k, v] of counts) if (v > top) { top = v; topKey = k; }
// The strip along the top edge (16 rows: where a desktop's panel sits): its most
// common colour and that colour's share of the strip.
const strip = new Map();
let m = 0;
for (let y = 0; y < Math.min(16, c.height); y++) {
  for (let x = 0; x < c.width; x += 4) {
    const i = (y * c.width + x) * 4;
    const k = (d[i] << 16) | (d[i + 1] << 8) | d[i + 2];
    strip.set(k, (strip.get(k) || 0) + 1);
    m++;
  }
}
let stripTop = 0, stripKey = -1;
for (const [k, v] of strip) if (v > stripTop) { stripTop = v; stripKey = k; }
// How much of the screen below the strip (from row 32) has the strip's colour.
let below = 0, rest = 0;
for (let y = 32; y < c.height; y += 4) {
  for (let x = 0; x < c.width; x += 4) {
    const i = (y * c.width + x) * 4;
    if (((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]) === stripKey) below++;
    rest++;
  }
}
return {width: c.width, height: c.height, dominant: n ? top / n : 1, colours: counts.size,
        dominant_rgb: topKey, strip_rgb: stripKey, strip_share: m ? stripTop / m : 0,
        strip_below: rest ? below / rest : 1};
"""

STATE = """
const cl = document.documentElement.classList;
const s = document.getElementById('noVNC_status');
return {
  connected: cl.contains('noVNC_connected'),
  status: s ? s.textContent : '',
  asking: !!document.querySelector('.noVNC_open #noVNC_password_input, #noVNC_credentials_dlg.noVNC_open'),
};
"""


def wait(deadline, what, ready, every=0.5):
    while True:
        v = ready()
        if v:
            return v
        if time.monotonic() > deadline:
            raise Failed(f"timed out waiting for {what}")
        time.sleep(every)


def shows_a_window(stats):
    return stats["width"] > 0 and stats["dominant"] < 0.99 and stats["colours"] > 2


def has_top_panel(stats):
    """A panel along the top edge: one colour covers most of the top strip, and little
    of the screen below it has that colour (a plain root window, or a window reaching
    the edge on one, has the same colour there as below)."""
    return stats.get("strip_share", 0) >= 0.5 and stats.get("strip_below", 1) < 0.1


def rgb(key):
    return f"#{key:06x}" if key is not None and key >= 0 else "none"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--screenshot", default="novnc-desktop.png")
    ap.add_argument("--expect-refused", action="store_true")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--min-colours", type=int, default=0, metavar="N")
    ap.add_argument("--expect-top-panel", action="store_true")
    add_browser_args(ap, window_size="1280x800")
    args = ap.parse_args()
    password = os.environ.get("NOVNC_PASSWORD", "")
    if not password:
        ap.error("NOVNC_PASSWORD must be set in the environment")

    deadline = time.monotonic() + args.timeout
    driver = start_browser(args)
    ok = False
    try:
        sep = "&" if "?" in args.url else "?"
        # autoconnect: noVNC connects at once and asks for the password; resize=scale
        # fits the remote screen into the window for the screenshot.
        driver.get(f"{args.url}{sep}autoconnect=true&resize=scale&reconnect=false")
        state = lambda: driver.execute_script(STATE)
        field = wait(
            deadline,
            "noVNC's password dialog",
            lambda: next(
                (e for e in driver.find_elements(By.ID, "noVNC_password_input") if e.is_displayed()),
                None,
            ),
        )
        if state()["connected"]:
            raise Failed("noVNC showed the desktop before a password was given")
        print("password dialog: shown")
        field.send_keys(password)
        driver.find_element(By.ID, "noVNC_credentials_button").click()
        if args.expect_refused:
            def refused():
                s = state()
                if s["connected"]:
                    raise Failed("noVNC connected with the wrong password")
                stats = driver.execute_script(CANVAS_STATS)
                if shows_a_window(stats):
                    raise Failed(f"the desktop's canvas shows content: {stats}")
                return "authentication fail" in s["status"].lower() and s
            s = wait(deadline, "noVNC to report that authentication failed", refused)
            # It stays refused: no late connection.
            time.sleep(3)
            if state()["connected"]:
                raise Failed("noVNC connected with the wrong password")
            print(f"status: {s['status'].strip()}")
            print("desktop: not shown")
        else:
            s = wait(
                deadline,
                "noVNC to connect",
                lambda: (state()["connected"] or "failed" in state()["status"].lower()) and state(),
            )
            if not s["connected"]:
                raise Failed(f"noVNC did not connect: {s['status'].strip()}")
            print("connected: yes")
            stats = wait(
                deadline,
                "a window on the desktop's canvas",
                lambda: (lambda st: shows_a_window(st) and st)(driver.execute_script(CANVAS_STATS)),
                every=1.0,
            )
            if args.min_colours:
                wait(
                    deadline,
                    f"at least {args.min_colours} colours on the desktop's canvas",
                    lambda: driver.execute_script(CANVAS_STATS)["colours"] >= args.min_colours,
                    every=1.0,
                )
            if args.expect_top_panel:
                wait(
                    deadline,
                    "a panel along the top of the desktop's canvas",
                    lambda: has_top_panel(driver.execute_script(CANVAS_STATS)),
                    every=1.0,
                )
            # Let the rest of the session draw before the picture is taken.
            time.sleep(2)
            stats = driver.execute_script(CANVAS_STATS)
            print(f"canvas dominant colour: {rgb(stats['dominant_rgb'])}")
            print(
                f"canvas top strip: {rgb(stats['strip_rgb'])} on {stats['strip_share']:.3f} of it,"
                f" {stats['strip_below']:.3f} of the screen below"
                f" (a panel: {'yes' if has_top_panel(stats) else 'no'})"
            )
            print(f"canvas: {stats['width']}x{stats['height']}")
            print(f"canvas dominant colour share: {stats['dominant']:.3f}")
            print(f"canvas colours: {stats['colours']}")
            driver.save_screenshot(args.screenshot)
            print(f"screenshot: {args.screenshot}")
        ok = True
    except (Failed, WebDriverException) as e:
        print(f"FAILED: {str(e).replace(password, '***')}", file=sys.stderr)
        try:
            print(f"state: {driver.execute_script(STATE)}", file=sys.stderr)
            print(f"canvas: {driver.execute_script(CANVAS_STATS)}", file=sys.stderr)
            driver.save_screenshot(args.screenshot.replace(".png", "-failure.png"))
        except WebDriverException:
            pass
    finally:
        driver.quit()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
