"""The Quantization and Parameters pages in a real headless Chromium: every chart is drawn with data."""

import pytest

from browser_support import chromium_page, plot_points, require_chromium, screenshot, streamlit_server, wait_until

pytestmark = pytest.mark.browser


def chart_count(page) -> int:
    return page.evaluate("() => document.querySelectorAll('.js-plotly-plot').length")


def chart_titles(page) -> list[str]:
    return page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')]
                                  .map(p => (p.layout && p.layout.title && p.layout.title.text) || '')""")


def open_page(page, url: str, title: str) -> None:
    """Open the app's root, then the page through the sidebar.

    NOTE: a first request straight to /<page> can make Streamlit 1.67 run pages/<page>.py on its own (the
    pages/ directory fallback) instead of through st.navigation in app.py.
    """
    page.goto(url)
    page.get_by_role("heading", name="Train").wait_for(timeout=60_000)
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).click()
    page.get_by_role("heading", name=title).wait_for(timeout=60_000)


def all_charts_drawn(page, expected: int) -> bool:
    count = chart_count(page)
    return count >= expected and all(plot_points(page, i) > 0 for i in range(count))


def test_lab_pages_draw_charts(home):
    require_chromium()
    with streamlit_server(home) as url, chromium_page(height=3600) as page:
        open_page(page, url, "Quantization lab")
        wait_until(page, lambda: all_charts_drawn(page, 4), timeout=90, message="four charts with data")
        titles = chart_titles(page)
        assert any("Quantization error" in t for t in titles), titles
        assert any("NF4 levels" in t for t in titles), titles
        assert plot_points(page, 0) == 61  # histogram bins of the first scheme's panel
        page.locator(".js-plotly-plot .ytitle", has_text="SQNR (dB)").wait_for()  # the axis title is drawn
        screenshot(page, "quantization-page.png")

        page.locator('[data-testid="stSidebarNav"] a', has_text="Parameters and memory").click()
        page.get_by_role("heading", name="Parameters and memory").wait_for(timeout=60_000)
        wait_until(page, lambda: all_charts_drawn(page, 4) and any("Llama-2-7B" in t for t in chart_titles(page)),
                   timeout=90, message="four charts with data")
        titles = chart_titles(page)
        assert any("Trainable parameters" in t for t in titles), titles
        assert any("Training memory of Llama-2-7B" in t for t in titles), titles
        page.get_by_text("LoRA adapter (float32)").wait_for()
        screenshot(page, "parameters-page.png")
