"""Opening a report page in headless Chromium and collecting what a person would notice.

``open_page`` loads a file:// page in a fresh offline context that aborts (and records) every
request that is not a file of the page itself, and returns the console errors, the images
that did not decode, the links and the page's text; a screenshot of the page is saved under
build/test-artifacts/report/ (ARTIFACTS) for a person to look at. The ``chromium`` fixture
(tests/conftest.py) closes the contexts a test opened once it ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from scripts_loader import ROOT

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "build" / "test-artifacts" / "report"


@dataclass
class PageCheck:
    path: Path
    title: str
    text: str
    console_errors: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)       # requests other than the page's own file
    broken_images: list[str] = field(default_factory=list)
    images: int = 0
    links: list[str] = field(default_factory=list)          # hrefs, as written
    scripts: int = 0
    page: object = None                                       # the Playwright page, open until the test ends

    def problems(self) -> list[str]:
        return ([f"console: {e}" for e in self.console_errors] + [f"fetched: {u}" for u in self.fetched]
                + [f"image not decoded: {i}" for i in self.broken_images])

    def link_target(self, href: str) -> Path:
        return (self.path.parent / unquote(urlparse(href).path)).resolve()


def open_page(browser, path: Path, screenshot: str | None = None) -> PageCheck:
    path = Path(path).resolve()
    context = browser.new_context(offline=True, java_script_enabled=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    check = PageCheck(path=path, title="", text="", page=page)
    page.on("console", lambda m: check.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: check.console_errors.append(f"uncaught: {e}"))
    own = path.as_uri()

    def route(r):
        if r.request.url != own:
            check.fetched.append(r.request.url)
            r.abort()
        else:
            r.continue_()

    context.route(re.compile(r"^(?!data:).*"), route)
    page.goto(own, wait_until="load")
    check.title = page.title()
    check.text = page.inner_text("body")
    images = page.evaluate("Array.from(document.images).map(i => [i.complete && i.naturalWidth > 0, i.alt])")
    check.images = len(images)
    check.broken_images = [alt for ok, alt in images if not ok]
    check.links = page.evaluate("Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))")
    check.scripts = page.evaluate("document.scripts.length")
    if screenshot:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{screenshot}.png"), full_page=True)
    return check
