"""The debiased exponential moving average that smooths compared curves."""

import math

import pytest

from tinylora.smoothing import smooth


def test_hand_computed_case():
    # weight 0.5 on [1, 2, 3]: each point is the average of the points so far weighted 1, 0.5, 0.25, ...
    # from the newest: 1, (2 + 0.5) / 1.5 = 5/3, (3 + 0.5 * 2 + 0.25 * 1) / 1.75 = 17/7.
    result = smooth([1.0, 2.0, 3.0], 0.5)
    assert result == pytest.approx([1.0, 5 / 3, 17 / 7], abs=1e-12)


@pytest.mark.parametrize("weight", [0.1, 0.6, 0.9, 0.99])
def test_first_point_equals_raw_first_value(weight):
    values = [0.73, 0.41, 0.55, 0.2]
    assert smooth(values, weight)[0] == pytest.approx(values[0], abs=1e-12)


def test_without_debiasing_first_point_would_be_pulled_to_zero():
    # The plain EMA starting at 0 gives (1 - weight) * x for the first point; the debiased one gives x.
    weight, first = 0.9, 2.0
    plain_first = (1 - weight) * first
    assert plain_first == pytest.approx(0.2)
    assert smooth([first, 1.0], weight)[0] == pytest.approx(first)


def test_zero_weight_returns_values_unchanged():
    values = [3.0, 1.0, 4.0, 1.0, 5.0]
    assert smooth(values, 0.0) == values


def test_constant_series_is_returned_exactly():
    values = [0.1] * 50
    assert smooth(values, 0.95) == values


@pytest.mark.parametrize("weight", [0.3, 0.6, 0.9])
def test_smoothed_values_stay_within_range(weight):
    values = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    result = smooth(values, weight)
    assert all(0.0 <= v <= 1.0 for v in result)


def test_more_weight_smooths_more():
    values = [1.0, 0.0] * 20
    spread = {w: max(smooth(values, w)[10:]) - min(smooth(values, w)[10:]) for w in (0.2, 0.6, 0.9)}
    assert spread[0.2] > spread[0.6] > spread[0.9]


def test_non_finite_values_pass_through_and_do_not_count():
    result = smooth([1.0, float("nan"), 3.0], 0.5)
    assert result[0] == 1.0
    assert math.isnan(result[1])
    # Only two finite points count: (3 + 0.5 * 1) / 1.5.
    assert result[2] == pytest.approx(7 / 3, abs=1e-12)


def test_empty_series():
    assert smooth([], 0.6) == []


@pytest.mark.parametrize("weight", [-0.1, 1.0, 1.5, float("nan"), "0.5"])
def test_invalid_weight_is_rejected(weight):
    with pytest.raises(ValueError, match="smoothing weight must be a number in \\[0, 1\\)"):
        smooth([1.0, 2.0], weight)
