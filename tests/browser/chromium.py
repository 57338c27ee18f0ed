"""Headless Chromium for the browser tests (ttyd_login.py, novnc_desktop.py): the
browser's command-line options and its start, shared by both scripts."""

import shutil

from selenium import webdriver
from selenium.webdriver.chrome.service import Service


class Failed(Exception):
    pass


def add_browser_args(ap, window_size):
    """--window-size (default `window_size`), --chromium and --chromedriver."""
    ap.add_argument("--window-size", default=window_size, metavar="WIDTHxHEIGHT")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument(
        "--chromedriver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver"
    )


def start_browser(args):
    opts = webdriver.ChromeOptions()
    opts.binary_location = args.chromium
    for a in (
        "--headless=new",
        "--no-sandbox",  # CI containers run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
    ):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(args.chromedriver), options=opts)
    # The page's size exactly (a window's size includes the browser's own frame).
    width, height = (int(v) for v in args.window_size.split("x"))
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    return driver
