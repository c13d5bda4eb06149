"""Intra-op thread counts for tests that compare a run's low bits, which the fast path's float sums depend on."""

import contextlib

import torch


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with `n` intra-op torch threads, as a worker with that count does."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
