"""Helpers for AppTest page tests: open a page, find a chart by its title and a table by its container key."""

import json

from streamlit.testing.v1 import AppTest

from conftest import ROOT


def page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / "pages" / name), default_timeout=120)


def chart_by_title(at: AppTest, start: str) -> dict:
    """The spec of the one Plotly chart whose title starts with `start`."""
    specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    matches = [spec for spec in specs if spec["layout"]["title"]["text"].startswith(start)]
    assert len(matches) == 1, [spec["layout"]["title"]["text"] for spec in specs]
    return matches[0]


def table(at: AppTest, key: str):
    """The DataFrame shown in the container with `key`."""
    return at.get_by_key(key).dataframe[0].value
