"""Tests for the benchmark suite's reference recipe, timing helpers and report writer."""

import pytest

from bench.report import BEGIN, END, write_section
from bench.runs import SteppedRun, run_config, run_reference, run_tinylora


@pytest.mark.parametrize("method", ["lora", "qlora-int8"])
def test_reference_matches_eager_tinylora_bitwise(method):
    """bench.reference builds, draws and trains exactly as tinylora with fast="off"."""
    reference = run_reference(method, epochs=1)
    eager = run_tinylora(run_config(method, fast="off", epochs=1))

    assert reference.steps == eager.steps == 16
    assert reference.final_loss == eager.final_loss
    assert reference.accuracies == eager.accuracies


def test_timing_splits_steps_from_evaluation():
    timing = run_tinylora(run_config("lora", epochs=1))

    assert 0 < timing.eval_seconds < timing.seconds
    assert timing.step_seconds == pytest.approx((timing.seconds - timing.eval_seconds) / 16)
    assert len(timing.accuracies) == 1


def test_write_section_replaces_between_markers(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Benchmarks\n\nprose\n\n{BEGIN}\nold figures\n{END}\n\nmore prose\n")

    write_section(path, "new figures")

    text = path.read_text()
    assert "old figures" not in text
    assert f"{BEGIN}\nnew figures\n{END}" in text
    assert text.startswith("# Benchmarks\n\nprose\n")
    assert text.endswith("more prose\n")


def test_write_section_appends_markers_when_missing(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n")

    write_section(path, "figures")

    assert path.read_text() == f"# Benchmarks\n\n{BEGIN}\nfigures\n{END}\n"


def test_interleaved_runs_train_as_alone():
    """Stepping two runs in turn keeps each run's batch order, so results equal those of lone runs."""
    alone = run_tinylora(run_config("lora", fast="off", epochs=1))
    runs = [SteppedRun("reference", "lora", 1), SteppedRun("tinylora fast=off", "lora", 1)]
    while not all(run.done for run in runs):
        for run in runs:
            if not run.done:
                run.advance()

    for run in runs:
        assert len(run.step_seconds) == 16
        assert run.final_loss == alone.final_loss
        assert run.accuracies == alone.accuracies


def test_two_cores_section_times_every_contender():
    """The two-core section runs the split contender with its own process count and leaves the process as it was."""
    from bench import two_cores
    from bench.report import _two_cores
    from tinylora.split_step import step_processes

    figures = two_cores.two_cores(["lora"], reps=1, epochs=1)

    entry = figures["lora"]
    assert list(entry) == [name for name, *_ in two_cores.SPLIT_CONTENDERS]
    for name, e in entry.items():
        assert e["step_ms"]["median"] > 0
        assert len(e["accuracies"]) == 1
    assert entry["reference, 1 thread"]["speedup_steps"]["reference, 1 thread"]["median"] == 1.0
    # Rounding differs with the split, but one epoch of the default run keeps its accuracy.
    assert entry["tinylora, 2 processes of 1 thread"]["accuracies"] == entry["reference, 1 thread"]["accuracies"]
    assert step_processes() == 1
    table = "\n".join(_two_cores(figures, {"epochs": 1, "reps": 1}))
    assert "| lora | 3x | tinylora, 2 processes of 1 thread |" in table
