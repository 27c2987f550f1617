"""A page as a person sees it: Debian's headless Chromium (driven by Playwright, whose own
browser download is never used), with what the page complained about, and a check that a
screenshot shows something."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"
                                    " (.ci/run installs it)")


@contextmanager
def headless_page(page_file: Path, width: int = 1100, height: int = 900) -> Iterator[tuple]:
    """``(page, problems)``: ``page_file`` open in headless Chromium; ``problems`` collects its
    console errors and warnings, page errors and failed requests (a test asserts it empty)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("requestfailed", lambda r: problems.append("request failed: " + r.url))
            page.goto(page_file.as_uri())
            yield page, problems
        finally:
            browser.close()


def assert_not_blank(screenshot: bytes) -> None:
    """Text and drawings on the page, not an empty one."""
    from PIL import Image

    pixels = np.asarray(Image.open(BytesIO(screenshot)).convert("L"))
    assert pixels.std() > 10, "the screenshot is blank"
    assert (pixels < 128).mean() > 0.01, "nothing dark is drawn"
