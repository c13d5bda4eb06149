"""The Train page in a real headless Chromium against a live server on 127.0.0.1."""

import re
import pytest

from browser_support import chromium_page, plot_points, require_chromium, screenshot, streamlit_server, wait_until
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
        first = wait_until(page, lambda: plot_points(page, 0), timeout=60, message="the first loss point")
        wait_until(page, lambda: plot_points(page, 0) > first + 5, timeout=60, message="the loss chart to grow")
        assert store.get_run(run_id).status == "running"

        # A widget change mid-run redraws the page; the run keeps going.
        set_number(page, "r (rank)", 8)
        before = plot_points(page, 0)
        wait_until(page, lambda: plot_points(page, 0) > before + 5, timeout=60, message="the run to continue")
        assert current_run_id(page) == run_id
        assert store.get_run(run_id).status == "running"

        # A refresh shows the same run, still training.
        page.reload()
        page.get_by_role("heading", name="Train").wait_for(timeout=60_000)
        assert current_run_id(page) == run_id
        points = wait_until(page, lambda: plot_points(page, 0), timeout=60, message="the chart after the refresh")
        wait_until(page, lambda: plot_points(page, 0) > points, timeout=60, message="the chart to grow after refresh")
        assert len(store.list_runs()) == 1

        # Stop ends the run and the page says so.
        page.get_by_role("button", name="Stop", exact=True).click()
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
        wait_until(page, lambda: plot_points(page, 1) == 8, timeout=30, message="eight accuracy points")
        assert plot_points(page, 0) == 128
        page.get_by_text("6,274").first.wait_for()
        screenshot(page, "train-finished.png")
