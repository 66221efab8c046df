"""Open a contact sheet in headless Chromium: screenshot it and check it rendered cleanly.

Checks, each printed with its result:

* Chromium exits 0 and writes the screenshot;
* the screenshot is not blank (its pixels vary, and many differ from the background);
* the page's script ran to its end (``data-ready="1"`` in the DOM after load) and every
  thumbnail decoded (``data-broken-images="0"``);
* the DOM holds as many groups and thumbnails as the HTML file;
* the browser console logged nothing (no ``Uncaught`` error, no message at all).

Usage::

    python scripts/screenshot_contact_sheet.py outputs/groups/demo/contact_sheet.html \
        --out outputs/groups/demo/contact_sheet_screenshot.png

Exit status 0 when every check passes, 1 when one fails, 2 when Chromium is missing
(Debian: ``apt-get install chromium``) or the HTML file does not exist.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
)


@dataclass
class BrowserCheck:
    """Outcome of :func:`check_page`."""

    screenshot: Path
    checks: dict[str, bool] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(self.checks.values())


def find_browser() -> str | None:
    """Path of a Chromium-like browser (``$CHROMIUM`` first), or ``None``."""
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(browser: str, extra: list[str], url: str, timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="cbir-chromium-") as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", *extra, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def console_messages(stderr: str) -> list[str]:
    """The browser-console lines of Chromium's log (``...:CONSOLE...] "message", source...``)."""
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]


def blankness(png: Path) -> tuple[float, float]:
    """``(std of gray levels, share of pixels unlike the most common colour)`` of an image."""
    arr = np.asarray(Image.open(png).convert("L"), dtype=np.int16)
    values, counts = np.unique(arr, return_counts=True)
    background = values[counts.argmax()]
    return float(arr.std()), float((np.abs(arr - background) > 8).mean())


def check_page(
    html: Path, screenshot: Path, width: int = 1280, height: int = 1600, timeout: float = 120
) -> BrowserCheck:
    """Render ``html`` headless, save a screenshot and run the checks of the module docstring."""
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError("No Chromium found (apt-get install chromium, or set $CHROMIUM).")
    html = Path(html).resolve()
    screenshot = Path(screenshot).resolve()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    url = html.as_uri()
    result = BrowserCheck(screenshot)

    shot = _run(
        browser, [f"--screenshot={screenshot}", f"--window-size={width},{height}"], url, timeout
    )
    result.checks["screenshot written"] = shot.returncode == 0 and screenshot.is_file()
    result.details["screenshot written"] = f"exit {shot.returncode}"
    if screenshot.is_file():
        std, busy = blankness(screenshot)
        result.checks["screenshot not blank"] = std > 10 and busy > 0.05
        result.details["screenshot not blank"] = f"gray std {std:.1f}, {busy:.0%} non-background"

    dom = _run(browser, ["--dump-dom", "--virtual-time-budget=5000"], url, timeout)
    text = html.read_text(encoding="utf-8")
    body = re.search(r"<body[^>]*>", dom.stdout)
    body_tag = body.group(0) if body else ""
    result.checks["script ran"] = 'data-ready="1"' in body_tag
    broken = re.search(r'data-broken-images="(\d+)"', body_tag)
    result.checks["all thumbnails decoded"] = broken is not None and broken.group(1) == "0"
    result.details["all thumbnails decoded"] = (
        f"{broken.group(1)} broken" if broken else "load event not seen"
    )
    want = (text.count('<section class="group"'), text.count("<img "))
    got = (dom.stdout.count('<section class="group'), dom.stdout.count("<img "))
    result.checks["groups and thumbnails in the DOM"] = got == want and want[1] > 0
    result.details["groups and thumbnails in the DOM"] = (
        f"{got[0]} groups, {got[1]} images (file: {want[0]}, {want[1]})"
    )
    msgs = console_messages(shot.stderr) + console_messages(dom.stderr)
    result.checks["no console messages"] = not msgs
    result.details["no console messages"] = "; ".join(msgs[:5]) or "none"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", type=Path, help="contact sheet .html file")
    parser.add_argument(
        "--out", type=Path, help="screenshot .png (default: next to the HTML, *_screenshot.png)"
    )
    parser.add_argument("--width", type=int, default=1280, help="window width in pixels")
    parser.add_argument("--height", type=int, default=1600, help="window height in pixels")
    args = parser.parse_args(argv)
    if not args.html.is_file():
        print(f"error: {args.html} does not exist", file=sys.stderr)
        return 2
    out = args.out or args.html.with_name(args.html.stem + "_screenshot.png")
    try:
        result = check_page(args.html, out, args.width, args.height)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, passed in result.checks.items():
        detail = result.details.get(name, "")
        print(f"{'ok  ' if passed else 'FAIL'} {name}" + (f" ({detail})" if detail else ""))
    print(f"screenshot: {result.screenshot}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
