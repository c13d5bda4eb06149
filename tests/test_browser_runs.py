"""The Runs page in a real headless Chromium: a run outlives a server restart, uploads, comparison, CSV."""

import csv
import io
import re

import pytest

from browser_support import chromium_page, require_chromium, screenshot, streamlit_server, wait_until
from conftest import stop_runner
from tinylora.adapter_writing import zip_adapter
from tinylora.store import RunStore

pytestmark = pytest.mark.browser

ROW_HEIGHT = 35  # st.dataframe's default row and header height in pixels


def grid_texts(page) -> list[str]:
    """The text of every cell of the runs table, from the grid's accessible cells."""
    return page.evaluate("() => Array.from(document.querySelectorAll('[data-testid=stDataFrame] [role=gridcell]'))"
                         ".map(cell => cell.textContent)")


def table_row(page, run_id: str) -> list[str] | None:
    """The first 12 cells of the row that starts with `run_id`, or None when it is not shown.

    The grid draws only the columns in view: at the test's width the last one is scrolled out of it."""
    cells = grid_texts(page)
    if run_id not in cells:
        return None
    start = cells.index(run_id)
    return cells[start:start + 12]


def chart_traces(page, title: str) -> dict[str, int]:
    """Number of points of each trace, by name, in the newest Plotly chart titled `title` ({} when none)."""
    return page.evaluate(
        """(title) => { const plots = Array.from(document.querySelectorAll('.js-plotly-plot'))
                          .filter(p => p.layout && p.layout.title && p.layout.title.text.includes(title));
                        if (!plots.length) return {};
                        const traces = {};
                        for (const t of plots[plots.length - 1].data) traces[t.name] = (t.x || []).length;
                        return traces; }""", title)


def tick_row(page, index: int) -> None:
    """Click the selection checkbox of the index-th row of the runs table."""
    box = page.locator("[data-testid=stDataFrame]").first.bounding_box()
    page.mouse.click(box["x"] + 16, box["y"] + ROW_HEIGHT * (index + 1) + ROW_HEIGHT / 2)


def test_run_survives_restart_then_compares_uploads_and_exports(home, tmp_path):
    require_chromium()
    store = RunStore(home)

    # Train a short run through the app.
    with streamlit_server(home) as url, chromium_page() as page:
        page.goto(url)
        page.get_by_role("heading", name="Train").wait_for(timeout=60_000)
        epochs = page.get_by_label("Epochs", exact=True)
        epochs.fill("1")
        epochs.press("Enter")
        page.wait_for_timeout(300)
        page.get_by_role("button", name="Train", exact=True).click()
        page.get_by_text(re.compile(r"Finished: validation accuracy")).wait_for(timeout=180_000)
        run_id = re.search(r"[?&]run=([^&#]+)", page.url).group(1)
    stop_runner(home)  # a restart of the machine takes the runner down too

    # A new server on the same data directory, opened straight on the Runs page's URL.
    with streamlit_server(home) as url, chromium_page() as page:
        page.goto(f"{url}/runs")
        page.get_by_role("heading", name="Runs").wait_for(timeout=60_000)
        row = wait_until(page, lambda: table_row(page, run_id), timeout=60, message="the run in the table")
        trained = store.get_run(run_id)
        assert (row[1], row[3], row[4], row[11]) == ("finished", "lora", "odd_majority", "train")
        assert float(row[2]) == trained.final_acc  # the accessible cells hold the unformatted values
        # app.py's navigation ("Train", "Runs"), not the one Streamlit builds from the pages/ folder ("app", ...).
        assert page.get_by_role("link", name="Train", exact=True).count() == 1
        assert page.get_by_role("link", name="app", exact=True).count() == 0

        # Upload the trained run's adapter; it is stored and evaluated as a run of its own.
        adapter_zip = tmp_path / "adapter.zip"
        adapter_zip.write_bytes(zip_adapter(store.run_dir(run_id) / "adapter"))
        page.locator("[data-testid=stFileUploaderDropzoneInput]").set_input_files(str(adapter_zip))
        page.get_by_text("adapter.zip").first.wait_for(timeout=30_000)
        page.get_by_role("button", name="Upload and evaluate").click()
        page.get_by_text(re.compile(r"Stored the adapter as run")).wait_for(timeout=30_000)
        upload = [r for r in store.list_runs() if r.kind == "upload"][0]
        wait_until(page, lambda: (r := table_row(page, upload.id)) and r[1] == "finished", timeout=90,
                   message="the upload's evaluation in the table")
        assert store.get_run(upload.id).final_acc == trained.final_acc

        # The upload is selected; tick the trained run too and both accuracy curves are overlaid.
        wait_until(page, lambda: len(chart_traces(page, "Validation accuracy")) == 1, timeout=30,
                   message="the upload's accuracy point")
        page.get_by_text("No training loss to show").first.wait_for(timeout=10_000)
        tick_row(page, 1)
        wait_until(page, lambda: 16 in chart_traces(page, "Training loss").values(), timeout=30,
                   message="the trained run's loss curve")
        wait_until(page, lambda: len(chart_traces(page, "Validation accuracy")) == 2, timeout=30,
                   message="both accuracy curves")
        assert sorted(chart_traces(page, "Validation accuracy").values()) == [1, 1]

        # The CSV holds every event of both runs.
        with page.expect_download() as download:
            page.get_by_role("button", name="Download metrics (CSV)").click()
        rows = list(csv.DictReader(io.StringIO(download.value.path().read_text())))
        assert {r["run_id"] for r in rows} == {run_id, upload.id}
        assert len(rows) == len(store.events(run_id)) + len(store.events(upload.id))
        assert [r["type"] for r in rows if r["run_id"] == upload.id] == ["start", "eval", "end"]
        page.set_viewport_size({"width": 1400, "height": 1500})
        page.wait_for_timeout(500)
        screenshot(page, "runs-compare.png")
