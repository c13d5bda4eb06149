"""The app in a real browser: click-to-first-chart-point latency, chart updates per second, and training speed
with a browser attached against the same run with none.

Run from the repository root: `python bench/app_latency.py [--reps 3] [--epochs 30]`. It starts
`streamlit run app.py` on a free port of 127.0.0.1 with a fresh data directory, drives Debian's Chromium at
/usr/bin/chromium through Playwright, and prints one JSON object. Nothing here is asserted: the figures go
into BENCHMARKS.md with the machine's load average at the time.

- Latency: from the Train click (browser clock) to the first loss point drawn in the live chart. The runner
  is already warm (the Train page starts it on load), as it is for a user who opened the page.
- Update rate: how often the loss chart's point count changes per second while the run trains.
- Attached vs headless: the run's own steps per second, interleaved with the same run submitted with no
  browser open, so both see the same machine load.
- Control: the same headless run while a second process spins on the other core (a Python busy loop that
  touches no memory). It shows what any work beside the worker costs it on this machine, browser or not.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from browser_support import chromium_page, streamlit_server  # noqa: E402
from tinylora import capacity, jobs  # noqa: E402
from tinylora.config import RunConfig, TrainConfig  # noqa: E402
from tinylora.store import RunStore  # noqa: E402

# Records, in the browser, each change of the live loss chart's number of points, with its time. The chart is a
# canvas in the shadow root of Streamlit's component element, which records its point count in an attribute. The
# MutationObservers wake only when the page changes, so the watching adds no work of its own between updates (a
# loop on every animation frame did, on the core the training worker shares).
WATCH_CHART = """() => {
  window.__changes = []; let last = -1; let watched = null;
  const record = () => {
    const n = watched ? Number(watched.dataset.points || 0) : 0;
    if (n !== last) { window.__changes.push([performance.now(), n]); last = n; }
  };
  const attach = () => {
    const host = document.querySelector('[data-testid="stBidiComponentIsolated"]');
    const canvas = host && host.shadowRoot && host.shadowRoot.querySelector('canvas[data-chart="loss"]');
    if (canvas && canvas !== watched) {
      watched = canvas;
      new MutationObserver(record).observe(canvas, {attributes: true, attributeFilter: ['data-points']});
      record();
    }
  };
  new MutationObserver(attach).observe(document.body, {subtree: true, childList: true});
  attach();
}"""


def wait_for_run_end(store: RunStore, run_id: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while store.get_run(run_id).active:
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} did not end within {timeout:.0f} s")
        time.sleep(0.2)


def wait_for_warm_runner(page, home: Path, timeout: float = 120) -> None:
    """Wait until the runner logs that it started, which it does after importing torch and the training code."""
    deadline = time.monotonic() + timeout
    log = home / "runner.log"
    while not (log.exists() and "started for" in log.read_text()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the runner did not start within {timeout:.0f} s; see {log}")
        page.wait_for_timeout(100)


def browser_run(page, url: str, store: RunStore, epochs: int) -> dict:
    """Start a run from the Train page, watch its chart until it ends, and return the measured figures."""
    page.goto(url)
    page.get_by_role("heading", name="Train").wait_for(timeout=120_000)
    wait_for_warm_runner(page, store.home)
    known = {run.id for run in store.list_runs()}
    box = page.get_by_label("Epochs", exact=True)
    box.fill(str(epochs))
    box.press("Enter")
    page.wait_for_timeout(1500)
    page.evaluate(WATCH_CHART)
    page.wait_for_timeout(500)
    button = page.get_by_role("button", name="Train", exact=True)
    button.wait_for()
    click_at = page.evaluate("() => performance.now()")
    button.click()

    deadline = time.monotonic() + 60
    while not (new := [run.id for run in store.list_runs() if run.id not in known]):
        if time.monotonic() > deadline:
            raise TimeoutError("the Train click started no run within 60 s")
        page.wait_for_timeout(50)
    run_id = new[0]
    while store.get_run(run_id).active:
        page.wait_for_timeout(200)
    page.wait_for_timeout(1000)
    changes = page.evaluate("() => window.__changes || []")
    drawn = [(t, n) for t, n in changes if t > click_at and n > 0]
    run = store.get_run(run_id)
    first = drawn[0][0] - click_at if drawn else None
    # Updates per second while training: point-count changes between the first point and the run's end.
    span = (drawn[-1][0] - drawn[0][0]) / 1000 if len(drawn) > 1 else 0
    return {"run_id": run_id, "first_point_seconds": first / 1000 if first is not None else None,
            "chart_updates": len(drawn), "updates_per_second": (len(drawn) - 1) / span if span else None,
            "steps_per_second": run.summary.get("steps_per_second")}


def headless_run(store: RunStore, epochs: int) -> float:
    run_id = jobs.submit(store, "train", RunConfig(train=TrainConfig(epochs=epochs)).to_dict())
    wait_for_run_end(store, run_id)
    return store.get_run(run_id).summary["steps_per_second"]


def busy_core_run(store: RunStore, epochs: int) -> float:
    """Return a headless run's steps per second while another process keeps one core busy."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        return headless_run(store, epochs)
    finally:
        spinner.kill()
        spinner.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="interleaved browser and headless runs (default 3)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs per run, 16 steps each (default 30)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="tinylora-bench-"))
    store = RunStore(home)
    browser, headless, busy = [], [], []
    with streamlit_server(home) as url, chromium_page() as page:
        for _ in range(args.reps):
            browser.append(browser_run(page, url, store, args.epochs))
            page.goto("about:blank")  # no browser attached to the app during the headless run
            headless.append(headless_run(store, args.epochs))
            busy.append(busy_core_run(store, args.epochs))
    ratios = [b["steps_per_second"] / h for b, h in zip(browser, headless)]
    result = {
        "command": "python bench/app_latency.py " + " ".join(sys.argv[1:]),
        "load_average_at_end": os.getloadavg(),
        "threads_per_run": capacity.threads_per_run(),
        "step_processes_per_run": capacity.step_processes_per_run(),
        "first_point_seconds": [b["first_point_seconds"] for b in browser],
        "first_point_median": statistics.median(b["first_point_seconds"] for b in browser
                                                if b["first_point_seconds"] is not None),
        "updates_per_second": [b["updates_per_second"] for b in browser],
        "steps_per_second_browser": [b["steps_per_second"] for b in browser],
        "steps_per_second_headless": headless,
        "browser_over_headless": ratios,
        "browser_over_headless_median": statistics.median(ratios),
        "steps_per_second_busy_core": busy,
        "busy_core_over_headless": [b / h for b, h in zip(busy, headless)],
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
