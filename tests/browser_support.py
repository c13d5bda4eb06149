"""A real Streamlit server on 127.0.0.1 and a headless Debian Chromium driven by Playwright."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def require_chromium() -> None:
    """Skip without Debian's chromium, unless TINYLORA_REQUIRE_BROWSER=1 (set by CI) makes that a failure."""
    if os.path.exists(CHROMIUM):
        return
    message = f"{CHROMIUM} not found; install it with: apt-get install -y chromium"
    if os.environ.get("TINYLORA_REQUIRE_BROWSER") == "1":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def streamlit_server(home: Path, extra_env: dict[str, str] | None = None):
    """Start `streamlit run app.py` on a free port of 127.0.0.1 with TINYLORA_HOME=home; yield its URL."""
    port = free_port()
    env = {**os.environ, "TINYLORA_HOME": str(home), **(extra_env or {})}
    log = open(home / f"streamlit-{port}.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start; see {log.name}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@contextmanager
def chromium_page(width: int = 1400, height: int = 1000):
    """A page in headless Debian Chromium (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


def wait_until(page, predicate, timeout: float = 60.0, interval: float = 0.1, message: str = "condition"):
    """Poll `predicate` while letting Playwright process browser events; save a screenshot on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        page.wait_for_timeout(interval * 1000)
    path = screenshot(page, "timeout.png")
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {message}; screenshot: {path}")


def plot_points(page, index: int) -> int:
    """Number of x values in the first trace of the index-th Plotly chart on the page (0 when not drawn)."""
    return page.evaluate(
        """(i) => { const plots = document.querySelectorAll('.js-plotly-plot');
                    if (plots.length <= i || !plots[i].data || !plots[i].data.length) return 0;
                    return (plots[i].data[0].x || []).length; }""", index)


def live_points(page, chart: str) -> int:
    """Number of points in the Train page's live `chart` ("loss" or "accuracy") while a run trains (0 when not
    drawn). The canvas component records it in the canvas's data-points attribute; Playwright's locators
    reach into the component's shadow root."""
    canvas = page.locator(f'canvas[data-chart="{chart}"]')
    if not canvas.count():
        return 0
    return int(canvas.first.get_attribute("data-points", timeout=5_000) or 0)


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path
