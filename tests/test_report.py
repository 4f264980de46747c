"""`iterpo report`: the page of a real (tiny) run, opened in a real headless Chromium.

The browser tests need Debian's chromium (/usr/bin/chromium) and the playwright package; without them they are
skipped, unless ITERPO_REQUIRE_BROWSER=1 (CI sets it after installing both), when their absence fails.
"""

import os
import shutil
from pathlib import Path

import pytest

from iterpo.config import Config
from iterpo.errors import RunDirError
from iterpo.report import ROUND_PLOTS, browser_html, write_report

from helpers import cli, run_config, tiny_config

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# flags for a machine without a network or a screen: no sandbox (root), no background connections
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def report(tiny_model_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reported") / "run"
    cfg = tiny_config(tiny_model_dir, run_dir, **{"judge.name": "parity_verifier", "eval.analyses": True})
    run_config(Config(**cfg))
    return write_report(run_dir)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not Path(CHROMIUM).exists():
        if os.environ.get("ITERPO_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser tests need playwright and chromium at {CHROMIUM} (ITERPO_REQUIRE_BROWSER=1)")
        pytest.skip("no headless Chromium here (apt-get install chromium; pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, report):
    """The report opened offline: every request other than the file itself is refused and recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.errors, page.outside = [], []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))

    def route(r):
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            page.outside.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page.goto(report.as_uri())
    page.wait_for_load_state("load")
    yield page
    context.close()


def test_the_page_loads_offline_with_no_console_errors(page):
    page.wait_for_timeout(300)
    assert page.errors == [] and page.outside == []
    assert page.title().startswith("iterpo run")


def test_every_plot_renders_with_its_traces(page):
    plots = page.locator("div.plot")
    titles = [t for t, _, _ in ROUND_PLOTS]
    assert plots.count() >= 8  # the tiny run has data for all but none of the round plots, and the step plots
    for i in range(plots.count()):
        plot = plots.nth(i)
        assert plot.locator(".main-svg").count() >= 1
        box = plot.locator(".main-svg").first.bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 200
        # drawn traces: lines or markers or bars inside the plot area
        drawn = plot.locator(".scatterlayer .trace path, .scatterlayer .trace .point, .barlayer .trace path")
        assert drawn.count() > 0, plot.get_attribute("id")
    shown = page.locator(".plot .gtitle").evaluate_all("titles => titles.map(t => t.textContent)")
    assert len(shown) == plots.count()
    for expected in (
        titles[0],
        "KL to the reference and to the starting model",
        "Training loss per step",
        "Stage times",
    ):
        assert expected in shown


def _visible(page):
    return page.locator("table.browser tr.item:not([hidden])")


def test_filtering_the_sample_browser(page):
    rows = page.locator("table.browser tr.item")
    total = rows.count()
    assert total > 0 and page.locator("#shown").inner_text() == f"{total} of {total} shown"

    page.select_option("#filter-round", "2")
    visible = _visible(page)
    assert 0 < visible.count() < total
    assert set(visible.evaluate_all("rows => rows.map(r => r.dataset.round)")) == {"2"}

    page.select_option("#filter-kind", "chosen")
    chosen = _visible(page)
    assert chosen.count() > 0
    assert set(chosen.evaluate_all("rows => rows.map(r => r.dataset.kind)")) == {"chosen"}
    assert page.locator("#shown").inner_text() == f"{chosen.count()} of {total} shown"

    page.select_option("#filter-kind", "")
    page.select_option("#filter-round", "")
    prompt_id = rows.first.locator("td").nth(2).inner_text()
    page.fill("#filter-text", prompt_id)
    found = _visible(page)
    assert 0 < found.count() < total
    assert all(prompt_id in t for t in found.all_inner_texts())

    page.fill("#filter-text", "no row has this text")
    assert _visible(page).count() == 0 and page.locator("#shown").inner_text() == f"0 of {total} shown"
    page.fill("#filter-text", "")
    assert _visible(page).count() == total


def test_the_models_text_is_shown_never_run():
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    rows = [
        {
            "round": 1,
            "kind": "chosen",
            "prompt_id": "p",
            "sample": 0,
            "prompt": hostile,
            "response": hostile,
            "score": 1.0,
            "detail": hostile,
        }
    ]
    page = browser_html(rows, [0, 1])
    assert "<script>" not in page and "<img" not in page
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") == 3


def test_report_command_and_its_errors(report, tmp_path):
    out = tmp_path / "page.html"
    code, stdout, _ = cli("report", str(report.parent), "--out", str(out), "--prompts", "1")
    assert code == 0 and out.exists() and "report written to" in stdout
    assert out.read_text().count('class="item"') < report.read_text().count('class="item"')  # fewer prompts
    code, _, err = cli("report", str(tmp_path / "nowhere"))
    assert code != 0 and "not an iterpo run directory" in err
    with pytest.raises(RunDirError):
        write_report(tmp_path)


def test_a_run_in_progress_is_reported_with_what_it_has(report, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(report.parent, partial)
    shutil.rmtree(partial / "round-002")  # round 2 has not started
    page = write_report(partial).read_text()
    assert "2 of 3 evaluations so far" in page
    assert 'data-round="1"' in page and 'data-round="2"' not in page
