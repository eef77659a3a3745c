"""The built book as a reader's browser shows it: headless Chromium over a local server.

Every page loads without console errors and requests nothing off this machine; every image is
present and non-empty; every formula is rendered by MathJax (served from the book's own files);
no internal link is broken; no table is wider than its column, no cell is cut with "…", every
figure has a numbered caption. A screenshot of each page goes to ``book/_build/screenshots/``.
"""
import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import pytest

from moebackdoor import book

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine: "
                                "install Debian's package (apt-get install chromium) to run the browser test")
SCREENSHOTS = book.BOOK / "_build" / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-default-apps"]


# what a reader would see wrong on a page: a table past its column, a cell cut with an ellipsis,
# a figure of a chapter without a numbered caption
LAYOUT_PROBLEMS = r"""() => {
  const out = [];
  document.querySelectorAll('article table').forEach((t, i) => {
    const col = t.parentElement.closest('article, section, div.cell_output') || t.parentElement;
    const r = t.getBoundingClientRect(), c = col.getBoundingClientRect();
    if (r.right > c.right + 1 || r.width > c.width + 1)
      out.push(`table ${i + 1} is ${Math.round(r.width)} px wide in a ${Math.round(c.width)} px column`);
    t.querySelectorAll('td, th').forEach(cell => {
      if (/\u2026|\.\.\./.test(cell.innerText))
        out.push(`table ${i + 1} has a cut cell: ${cell.innerText.slice(0, 60)}`);
    });
  });
  document.querySelectorAll('article div.cell_output img').forEach(img => {
    const fig = img.closest('figure');
    if (!fig || !fig.querySelector('figcaption .caption-number'))
      out.push(`figure ${img.getAttribute('src')} has no numbered caption`);
  });
  return out;
}"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served_book(request):
    """The smoke book's HTML on http://127.0.0.1:<port>/; with ``MOEBD_BROWSER_SITE=book/_build/html``,
    an already built book instead (e.g. the quick one that ``make book`` built)."""
    site = os.environ.get("MOEBD_BROWSER_SITE")
    html = Path(site).resolve() if site else request.getfixturevalue("smoke_book")[1] / "_build" / "html"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(html)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield html, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def _pages(html: Path) -> list[str]:
    """Every page of the book: the table of contents' documents and the references."""
    return [f"chapters/{s}.html" for s in book.toc_stems()] + ["references.html"]


def _ids(path: Path) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', path.read_text(errors="replace")))


def test_every_page_renders_offline_in_chromium(served_book):
    html, base = served_book
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    problems = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        offsite = []

        def route(r):  # nothing may leave the machine
            if urlparse(r.request.url).hostname not in ("127.0.0.1", None):
                offsite.append(r.request.url)
                return r.abort()
            return r.continue_()
        context.route("**/*", route)
        page = context.new_page()
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))

        for name in _pages(html):
            errors.clear()
            response = page.goto(base + name, wait_until="networkidle")
            if response is None or response.status != 200:
                problems.append(f"{name}: HTTP {response and response.status}")
                continue
            n_math = page.locator(".math").count()
            if n_math:  # wait for MathJax to typeset every formula
                page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.document"
                                       " && document.querySelectorAll('.math mjx-container').length >= "
                                       f"{n_math}", timeout=20000)
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.getAttribute('src'), e.complete, e.naturalWidth])")
            problems += [f"{name}: image {src} is missing or empty" for src, done, width in images
                         if not done or width == 0]
            raw = page.locator(".math:not(:has(mjx-container))").count()
            if raw:
                problems.append(f"{name}: {raw} formula(s) not rendered")
            for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"):
                url, fragment = urldefrag(urljoin(base + name, href))
                if not url.startswith(base):
                    continue  # external links are not followed
                target = html / urlparse(url).path.lstrip("/")
                if target.is_dir():
                    target = target / "index.html"
                if not target.is_file():
                    problems.append(f"{name}: broken link {href}")
                elif fragment and target.suffix == ".html" and fragment not in _ids(target):
                    problems.append(f"{name}: link {href} points to a missing anchor")
            problems += [f"{name}: {p}" for p in page.evaluate(LAYOUT_PROBLEMS)]
            page.screenshot(path=str(SCREENSHOTS / f"{Path(name).stem}.png"), full_page=True)
            problems += [f"{name}: console error: {e}" for e in errors]
        # the site's front door redirects to the landing page
        page.goto(base + "index.html", wait_until="networkidle")
        if not page.url.endswith("chapters/intro.html"):
            problems.append(f"index.html leads to {page.url}, not the landing page")
        browser.close()
    problems += [f"request off the machine: {u}" for u in sorted(set(offsite))]
    assert not problems, "\n".join(problems)
    for name in _pages(html):
        assert (SCREENSHOTS / f"{Path(name).stem}.png").stat().st_size > 10_000
