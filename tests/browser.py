"""Open a local HTML file in Debian's headless Chromium (driven by playwright) and report
what a person would see: console errors, requests, images, the page text, a screenshot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@dataclass
class Rendered:
    errors: list[str]
    requests: list[str]
    images: list[list]  # [complete, naturalWidth, naturalHeight] per <img>
    heading: str
    scripts: int
    config_text: str | None
    screenshot: np.ndarray  # (H, W, 3) uint8

    def is_blank(self) -> bool:
        px = self.screenshot.astype(np.int64)
        colours = np.unique((px * [65536, 256, 1]).sum(-1))
        return not (px.std() > 20 and colours.size > 50)


def render(page_path: Path, tmp_path: Path) -> Rendered:
    """Load ``page_path`` headless; skips the test when Chromium or playwright is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium; .ci/run does this)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright not installed (pip install -e '.[test]')")
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=BROWSER_ARGS, viewport={"width": 1100, "height": 900}, timeout=60_000)
        try:
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri(), wait_until="load", timeout=30_000)
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
            heading = page.inner_text("h1")
            scripts = page.evaluate("document.scripts.length")
            details = page.query_selector("details pre")
            config_text = details.text_content() if details else None  # collapsed: not inner_text
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            context.close()
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    return Rendered(errors, requests, images, heading, scripts, config_text, pixels)
