"""The Train page in a real headless Chromium against a live server on 127.0.0.1."""

import json
import re

import pytest

from browser_support import chromium_page, live_points, require_chromium, screenshot, streamlit_server, wait_until
from run_factory import add_run
from tinylora.config import RunConfig, TrainConfig
from tinylora.store import RunStore

pytestmark = pytest.mark.browser




def set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_timeout(300)


def current_run_id(page) -> str | None:
    match = re.search(r"[?&]run=([^&#]+)", page.url)
    return match.group(1) if match else None


def test_train_live_survives_clicks_and_refresh_then_stops(home):
    require_chromium()
    store = RunStore(home)
    with streamlit_server(home) as url, chromium_page() as page:
        page.goto(url)
        page.get_by_role("heading", name="Train").wait_for(timeout=60_000)
        set_number(page, "Epochs", 300)
        page.get_by_role("button", name="Train", exact=True).click()

        # The run's id lands in the URL and the loss chart grows while it trains.
        run_id = wait_until(page, lambda: current_run_id(page), message="the run id in the URL")
        first = wait_until(page, lambda: live_points(page, "loss"), timeout=60, message="the first loss point")
        wait_until(page, lambda: live_points(page, "loss") > first + 5, timeout=60, message="the loss chart to grow")
        assert store.get_run(run_id).status == "running"

        # A widget change mid-run redraws the page; the run keeps going.
        set_number(page, "r (rank)", 8)
        before = live_points(page, "loss")
        wait_until(page, lambda: live_points(page, "loss") > before + 5, timeout=60, message="the run to continue")
        assert current_run_id(page) == run_id
        assert store.get_run(run_id).status == "running"

        # A refresh shows the same run, still training.
        page.reload()
        page.get_by_role("heading", name="Train").wait_for(timeout=60_000)
        assert current_run_id(page) == run_id
        points = wait_until(page, lambda: live_points(page, "loss"), timeout=60, message="the chart after refresh")
        wait_until(page, lambda: live_points(page, "loss") > points, timeout=60, message="the chart to grow")
        page.get_by_text(re.compile(r"Step \d+ of 4800")).wait_for(timeout=10_000)  # the progress line
        assert len(store.list_runs()) == 1

        # Stop ends the run and the page says so.
        # The sidebar's Stop: Streamlit's own status widget shows a "Stop" button while a script runs.
        page.get_by_test_id("stSidebar").get_by_role("button", name="Stop", exact=True).click()
        page.get_by_text(re.compile(r"Stopped at step \d+ of 4800")).wait_for(timeout=30_000)
        assert store.get_run(run_id).status == "stopped"


def test_default_run_finishes_at_reference_accuracy(home):
    require_chromium()
    with streamlit_server(home) as url, chromium_page() as page:
        page.goto(url)
        page.get_by_role("heading", name="Train").wait_for(timeout=60_000)
        page.get_by_role("button", name="Train", exact=True).click()
        page.get_by_text(re.compile(r"Finished: validation accuracy")).wait_for(timeout=300_000)
        page.get_by_text(re.compile(r"Finished: validation accuracy 0\.984")).wait_for(timeout=5_000)
        wait_until(page, lambda: live_points(page, "accuracy") == 8, timeout=30, message="eight accuracy points")
        assert live_points(page, "loss") == 128
        page.get_by_text("6,274").first.wait_for()
        screenshot(page, "train-finished.png")


def test_live_charts_from_live_file(home):
    """The charts draw the worker's live file, never half a line of it, and the page shows the ended run."""
    require_chromium()
    store = RunStore(home)
    run_id = add_run(store, RunConfig(train=TrainConfig(epochs=4)), losses=[1.0] * 8, accs=[0.6], status="running")
    events = [{"type": "start", "steps_total": 64}]
    events += [{"type": "step", "step": i, "train/loss": 1 / i, "seconds": 0.01 * i} for i in range(1, 25)]
    events += [{"type": "eval", "step": 16 * i, "epoch": float(i), "val/acc": 0.5 + 0.1 * i, "seconds": 0.2}
               for i in (1, 2)]
    live = store.live_path(run_id)
    live.parent.mkdir(parents=True, exist_ok=True)
    live.write_text("".join(json.dumps(event) + "\n" for event in events))
    with streamlit_server(home) as url, chromium_page() as page:
        fetched = []
        page.on("response", lambda response: fetched.append(response.status) if live.name in response.url else None)
        page.goto(f"{url}/?run={run_id}")
        # The file has 24 steps and the store 8: the charts draw the file.
        wait_until(page, lambda: live_points(page, "loss") == 24, timeout=60, message="the live file's 24 steps")
        assert live_points(page, "accuracy") == 2
        # 24 steps in 0.24 s of training and two evaluations, as the progress line reads them.
        page.get_by_text(re.compile(r"Step 24 of 64 · 0\.2 s elapsed · about 0\.4 s left · 100\.0 steps per "
                                    r"second · validation accuracy 0\.700")).wait_for(timeout=10_000)
        assert 200 in fetched

        with live.open("a") as file:  # a line the worker is still writing
            file.write('{"type": "step", "step": 25, ')
        page.wait_for_timeout(1_000)
        assert live_points(page, "loss") == 24
        with live.open("a") as file:
            file.write('"train/loss": 0.04, "seconds": 0.25}\n')
        wait_until(page, lambda: live_points(page, "loss") == 25, timeout=10, message="the completed line")

        # The run ends: the store has its result and the file goes, so the page draws the run from the store.
        end = {"type": "end", "status": "finished", "final_acc": 0.75, "seconds": 0.25, "steps_per_second": 100.0}
        store.append_events(run_id, [end], summary={k: v for k, v in end.items() if k != "type"})
        store.finish_run(run_id, "finished", "", 0.75, 0.25)
        live.unlink()
        page.get_by_text("Finished: validation accuracy 0.750").wait_for(timeout=15_000)
        wait_until(page, lambda: live_points(page, "loss") == 8, timeout=15, message="the store's 8 steps")
