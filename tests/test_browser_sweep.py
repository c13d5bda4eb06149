"""The Sweep page in a real headless Chromium: a 2 x 2 grid fills in live, then its best run opens on Train.

A second test starts a sweep while an older one is shown and checks that the page switches to the new one.
"""

import re

import pytest

from browser_support import chromium_page, require_chromium, screenshot, streamlit_server, wait_until
from tinylora.store import RunStore
from tinylora.sweep import SweepSpec
from tinylora.sweep_store import dispatchers, list_sweeps, save_sweep

pytestmark = pytest.mark.browser

PLOT_BY_TITLE = """(title) => {
    const plot = Array.from(document.querySelectorAll('.js-plotly-plot'))
        .find(p => p.layout && p.layout.title && (p.layout.title.text || '').replace(/<[^>]+>/g, '') === title);
    return plot ? {data: plot.data.map(t => ({type: t.type, x: t.x, y: t.y, z: t.z,
                                              dimensions: (t.dimensions || []).map(d => d.values.length)}))}
                : null; }"""


def set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_timeout(300)


def set_text(page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Enter")
    page.wait_for_timeout(300)


def test_start_switches_page_to_new_sweep(home):
    require_chromium()
    store = RunStore(home)
    old = save_sweep(store, SweepSpec.from_dict({"name": "older sweep", "axes": {"r": [2]}}))
    with streamlit_server(home) as url, chromium_page(1400, 2000) as page:
        page.goto(f"{url}/sweep")
        page.get_by_role("heading", name="Sweep", exact=True).wait_for(timeout=60_000)
        wait_until(page, lambda: f"sweep={old.id}" in page.url, timeout=30, message="the older sweep in the URL")
        picker = page.get_by_role("combobox", name="Sweep", exact=True)
        assert picker.input_value().startswith("older sweep (")

        # One long run, so the new sweep is still running when the page has switched to it.
        set_text(page, "r (rank)", "2")
        set_text(page, "lora_alpha", "8")
        set_text(page, "Name", "newer sweep")
        page.get_by_text("Every run").click()
        set_number(page, "Epochs", 300)
        set_number(page, "Training examples", 256)
        page.get_by_text("1 point × 1 seed = 1 runs").wait_for(timeout=30_000)
        page.get_by_role("button", name="Start sweep").click()

        wait_until(page, lambda: len(list_sweeps(store)) == 2, timeout=30, message="the new sweep record")
        new = list_sweeps(store)[0]
        assert new.spec.name == "newer sweep"
        wait_until(page, lambda: f"sweep={new.id}" in page.url, timeout=30, message="the new sweep in the URL")
        wait_until(page, lambda: picker.input_value().startswith("newer sweep ("), timeout=30,
                   message="the picker to show the new sweep")
        stop = page.get_by_role("button", name="Stop sweep")
        wait_until(page, lambda: stop.is_enabled(), timeout=30, message="Stop to be enabled")
        assert page.get_by_text("Running on this machine").is_visible()

        stop.click()
        wait_until(page, lambda: not dispatchers(store, new.id)[0].active, timeout=60, message="the sweep to stop")
        wait_until(page, lambda: stop.is_disabled(), timeout=30, message="Stop to be disabled")
        assert f"sweep={new.id}" in page.url


def test_sweep_fills_in_and_opens_best_on_train(home):
    require_chromium()
    store = RunStore(home)
    with streamlit_server(home) as url, chromium_page(1400, 3200) as page:
        page.goto(url)
        page.get_by_role("heading", name="Train", exact=True).wait_for(timeout=60_000)
        page.get_by_role("link", name="Sweep").click()
        page.get_by_role("heading", name="Sweep", exact=True).wait_for(timeout=60_000)
        page.get_by_text("Every run").click()
        set_number(page, "Epochs", 2)
        set_number(page, "Training examples", 256)
        page.get_by_text("4 points × 1 seed = 4 runs").wait_for(timeout=30_000)
        page.get_by_role("button", name="Start sweep").click()

        # The page fills in by itself: no reload between the click and the last run's result.
        wait_until(page, lambda: list_sweeps(store), timeout=30, message="the sweep record")
        [record] = list_sweeps(store)
        wait_until(page, lambda: re.search(r"sweep=" + record.id, page.url), timeout=30, message="the sweep in the URL")
        page.get_by_text("4 of 4 runs done").wait_for(timeout=180_000)
        assert dispatchers(store, record.id)[0].status in ("running", "finished")
        runs = {(r.config["lora"]["r"], r.config["lora"]["lora_alpha"]): r
                for r in store.list_runs(kind="train", group_id=record.id)}
        assert {r.status for r in runs.values()} == {"finished"}

        # The heatmap shows each point's accuracy; r on x, lora_alpha on y.
        heatmap = wait_until(page, lambda: page.evaluate(PLOT_BY_TITLE, "Mean final validation accuracy"),
                             timeout=30, message="the heatmap")
        z = heatmap["data"][0]["z"]
        assert heatmap["data"][0]["x"] == ["2", "8"]
        assert heatmap["data"][0]["y"] == ["8", "16"]
        assert z == [[runs[(2, 8.0)].final_acc, runs[(8, 8.0)].final_acc],
                     [runs[(2, 16.0)].final_acc, runs[(8, 16.0)].final_acc]]
        cell_texts = page.evaluate("Array.from(document.querySelectorAll('.js-plotly-plot .heatmaplayer text'))"
                                   ".map(t => t.textContent)")
        for row in z:
            for value in row:
                assert f"{value:.3f}" in cell_texts

        # Hovering a cell shows its spread over seeds and how many runs it averages (one seed here: no spread).
        find = ("() => Array.from(document.querySelectorAll('.js-plotly-plot')).findIndex("
                "p => p.layout && (p.layout.title.text || '').includes('Mean final validation accuracy'))")
        box = page.locator(".js-plotly-plot").nth(page.evaluate(find)).locator(".nsewdrag").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.75)  # r=2, lora_alpha=8
        hover = wait_until(page, lambda: page.evaluate(
            "Array.from(document.querySelectorAll('.hoverlayer text')).map(t => t.textContent).join(' ')"),
            timeout=10, message="the heatmap's hover label")
        assert f"mean accuracy {runs[(2, 8.0)].final_acc:.3f}" in hover
        assert "std –" in hover
        assert "runs averaged 1" in hover
        page.mouse.move(0, 0)

        # The parallel-coordinates plot has one line per run across r, lora_alpha, trainable and accuracy.
        parallel = page.evaluate(PLOT_BY_TITLE, "Every finished run")
        assert parallel["data"][0]["type"] == "parcoords"
        assert parallel["data"][0]["dimensions"] == [4, 4, 4, 4]
        by_r = page.evaluate(PLOT_BY_TITLE, "Accuracy and trainable parameters against r")
        assert [trace["x"] for trace in by_r["data"]] == [[2, 8], [2, 8]]
        assert by_r["data"][1]["y"] == [runs[(2, 8.0)].summary["trainable"], runs[(8, 8.0)].summary["trainable"]]

        # The results table (its grid keeps an accessible copy of the cells in the DOM) and the best point.
        cells = page.locator("[data-testid=stDataFrame] td").all_inner_texts()
        for run in runs.values():
            assert str(run.final_acc) in cells or f"{run.final_acc:.3f}" in cells
        best = max(runs.values(), key=lambda r: r.final_acc)
        page.get_by_text(f"mean validation accuracy {best.final_acc:.3f}").wait_for(timeout=10_000)
        page.get_by_text("Finished: 4 of 4 runs finished").wait_for(timeout=30_000)
        assert page.get_by_role("button", name="Stop sweep").is_disabled()
        page.wait_for_timeout(1000)
        screenshot(page, "sweep-finished.png")

        page.get_by_role("button", name="Open the best run on Train").click()
        page.get_by_role("heading", name="Train", exact=True).wait_for(timeout=60_000)
        wait_until(page, lambda: f"run={best.id}" in page.url, timeout=30, message="the best run in the URL")
        # The controls take the run's values within a few seconds and keep them.
        r_box = page.get_by_label("r (rank)", exact=True)
        alpha_box = page.get_by_label("lora_alpha", exact=True)
        loaded = (str(best.config["lora"]["r"]), f"{best.config['lora']['lora_alpha']:.2f}")
        wait_until(page, lambda: (r_box.input_value(), alpha_box.input_value()) == loaded, timeout=10,
                   message=f"r and lora_alpha to read {loaded}")
        page.wait_for_timeout(2000)
        assert (r_box.input_value(), alpha_box.input_value()) == loaded
        page.get_by_text(re.compile(r"Finished: validation accuracy")).wait_for(timeout=30_000)
