"""Screenshots of a run's report for the README: python docs/screenshot.py RUN_DIR (writes docs/report*.png).

Needs Debian's chromium and the playwright package (as the report's browser test)."""

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

from iterpo.report import write_report

ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"]
DOCS = Path(__file__).resolve().parent


def main(run_dir: str) -> None:
    page_path = write_report(run_dir)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1500})
        page.goto(page_path.as_uri())
        page.wait_for_timeout(1000)
        page.screenshot(path=DOCS / "report.png")
        # the sample browser, filtered to round 3's pairs of one prompt
        page.select_option("#filter-round", "3")
        page.fill("#filter-text", "arith-train-00001")
        page.locator("h2", has_text="Samples").scroll_into_view_if_needed()
        page.locator("h2", has_text="Samples").evaluate("h => window.scrollTo(0, h.offsetTop - 10)")
        page.set_viewport_size({"width": 1280, "height": 520})
        page.screenshot(path=DOCS / "report-samples.png")
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1])
