"""Curve smoothing for comparing noisy runs: TensorBoard's debiased exponential moving average.

This follows `resmoothDataset` in TensorBoard's `tensorboard/components/vz_line_chart2/line-chart.ts`, which
Weights & Biases also uses for its default "exponential moving average" smoothing. The running average
starts at 0 and is divided by `1 - weight**n` after `n` finite points, so early points are not pulled towards
0 and the first smoothed point equals the first raw value. Non-finite values pass through unchanged and do
not count, and a constant series is returned as it is (the division would otherwise round it).
"""

import math
from collections.abc import Sequence


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """Return the debiased exponential moving average of `values` with smoothing `weight` in [0, 1).

    0 returns the values unchanged; values closer to 1 smooth more (TensorBoard's slider default is 0.6).
    """
    if not (isinstance(weight, (int, float)) and 0 <= weight < 1):
        raise ValueError(f"smoothing weight must be a number in [0, 1), got {weight!r}; use 0 for no smoothing "
                         f"and for example 0.6 for TensorBoard's default")
    values = [float(v) for v in values]
    if weight == 0 or all(v == values[0] for v in values):
        return values

    smoothed = []
    last, count = 0.0, 0
    for value in values:
        if not math.isfinite(value):
            smoothed.append(value)
            continue
        last = last * weight + (1 - weight) * value
        count += 1
        smoothed.append(last / (1 - weight ** count))
    return smoothed
