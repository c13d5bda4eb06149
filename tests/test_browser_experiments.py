"""The Adapters and Forgetting pages in a real headless Chromium: the heatmap and the timelines draw their data."""

import pytest

from browser_support import chromium_page, require_chromium, screenshot, streamlit_server, wait_until
from run_factory import run_job
from tinylora import jobs
from tinylora.forgetting import default_params
from tinylora.store import RunStore

pytestmark = pytest.mark.browser

TINY_TRAIN = {"n_train": 64, "n_val": 64, "batch_size": 16}
TASKS = ["odd_majority", "first_lt_last"]


def open_page(page, url: str, title: str) -> None:
    """Open the page through the sidebar (see test_browser_lab_pages for why not straight from its URL)."""
    page.goto(url)
    page.get_by_role("heading", name="Train").wait_for(timeout=60_000)
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).click()
    page.get_by_role("heading", name=title).wait_for(timeout=60_000)


def plot_index(page, title_part: str) -> int:
    """Index of the Plotly chart whose title contains `title_part`, or -1 (Streamlit wraps titles in <b>)."""
    return page.evaluate("""(part) => [...document.querySelectorAll('.js-plotly-plot')]
        .findIndex(p => p.layout && p.layout.title && (p.layout.title.text || '').includes(part))""", title_part)


def trace_lengths(page, index: int) -> list[int]:
    return page.evaluate("""(i) => { const p = document.querySelectorAll('.js-plotly-plot')[i];
                                     return (p && p.data || []).map(t => (t.x || []).length); }""", index)


def svg_texts(page, index: int) -> list[str]:
    """Every text drawn inside the index-th chart's SVG: tick labels, annotations, cell values."""
    return page.evaluate("""(i) => [...document.querySelectorAll('.js-plotly-plot')[i].querySelectorAll('text')]
                                   .map(t => t.textContent)""", index)


def test_heatmap_and_timeline_render(home):
    require_chromium()
    store = RunStore(home)
    adapter_set = run_job(store, "adapters", {"tasks": TASKS, "train": {**TINY_TRAIN, "epochs": 2}})
    matrix = store.get_run(adapter_set).summary["summary"]["matrix"]
    for strategy in ("sequential", "joint"):
        run_job(store, "forgetting", {**default_params(strategy), "epochs_a": 1, "epochs_b": 2, "epochs_joint": 2,
                                      "eval_every": 2, "train": TINY_TRAIN}, group_id="small")

    with streamlit_server(home) as url, chromium_page(height=2600) as page:
        open_page(page, url, "Adapters")
        heatmap = wait_until(page, lambda: (i := plot_index(page, "Validation accuracy: adapter")) >= 0 and i + 1,
                             timeout=60, message="the heatmap") - 1
        texts = wait_until(page, lambda: svg_texts(page, heatmap), message="the heatmap's text")
        assert "base (no adapter)" in texts
        for row in matrix["acc"]:
            for value in row:
                assert f"{value:.3f}" in texts
        page.get_by_text("A swap took").wait_for(timeout=30_000)
        mix = wait_until(page, lambda: (i := plot_index(page, "Mixing odd_majority")) >= 0 and i + 1,
                         timeout=60, message="the mixing chart") - 1
        assert trace_lengths(page, mix)[0::2] == [11, 11]
        screenshot(page, "adapters-page.png")

        # A run queued now is the newest comparison, so the page shows it and fills its timeline live.
        live = jobs.submit(store, "forgetting", {**default_params("sequential"), "epochs_a": 2, "epochs_b": 4,
                                                 "eval_every": 4}, group_id="live")
        page.locator('[data-testid="stSidebarNav"] a', has_text="Forgetting").click()
        page.get_by_role("heading", name="Forgetting").wait_for(timeout=60_000)
        timeline = wait_until(page, lambda: (i := plot_index(page, "Validation accuracy on each task")) >= 0
                              and i + 1, timeout=90, message="the timeline") - 1
        first = wait_until(page, lambda: trace_lengths(page, timeline)[:1] and trace_lengths(page, timeline)[0],
                           timeout=90, message="the first timeline point")
        wait_until(page, lambda: trace_lengths(page, timeline)[0] > first, timeout=90,
                   message="the timeline to grow while the run trains")
        wait_until(page, lambda: not store.get_run(live).active, timeout=120, message="the live run to end")
        points = len([e for _, e in store.events(live, types=("eval",))]) // 2
        wait_until(page, lambda: trace_lengths(page, timeline) == [points, points], timeout=30,
                   message="every evaluation on the chart")
        # Once the run ends the progress bar goes and the page reruns without the live refresh.
        wait_until(page, lambda: page.locator('[data-testid="stProgress"]').count() == 0, timeout=30,
                   message="the progress bar to go")
        timeline = plot_index(page, "Validation accuracy on each task")
        assert trace_lengths(page, timeline) == [points, points]
        texts = svg_texts(page, timeline)
        assert "phase A" in texts
        assert "phase B" in texts
        boundaries = page.evaluate("""(i) => (document.querySelectorAll('.js-plotly-plot')[i].layout.shapes || [])
                                      .filter(s => s.type === 'line' && s.x0 === s.x1).map(s => s.x0)""", timeline)
        assert boundaries == [2 * 16]  # phase B starts after two epochs of 16 steps on A
        screenshot(page, "forgetting-page.png")


def test_forgetting_summary_fits_window(home):
    require_chromium()
    store = RunStore(home)
    for strategy in ("sequential", "replay"):
        run_job(store, "forgetting", {**default_params(strategy), "epochs_a": 1, "epochs_b": 1, "eval_every": 0,
                                      "train": TINY_TRAIN}, group_id="fit")

    with streamlit_server(home) as url, chromium_page(width=1280) as page:
        open_page(page, url, "Forgetting")
        scroller = page.locator('[data-testid="stDataFrame"] .dvn-scroller').first
        scroller.wait_for(timeout=60_000)
        page.get_by_text("tag [CLS] with a task id").wait_for(timeout=30_000)
        scroll_width, client_width = scroller.evaluate("s => [s.scrollWidth, s.clientWidth]")
        screenshot(page, "forgetting-summary-1280.png")
        assert scroll_width <= client_width, "the summary table scrolls: some of its columns are out of view"
