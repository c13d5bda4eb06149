"""Thread and process counts for tests that compare a run's low bits, which the fast path's float sums depend on."""

import contextlib

import torch

from tinylora import split_step


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with `n` intra-op torch threads, as a worker with that count does."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def step_processes(n: int):
    """Run the block with training steps split over `n` processes, as a worker with that count does."""
    before = split_step.step_processes()
    split_step.set_step_processes(n)
    try:
        yield
    finally:
        split_step.set_step_processes(before)
