"""Synthetic binary classification tasks over one input distribution.

Every task draws sequences of uniformly random token ids from the same distribution and differs only in
the rule that labels them, so a model trained on one task and evaluated on another shows whether it
learned that task's rule or something shared. Each rule gives close to 50/50 classes, so chance accuracy is
about 0.5. `odd_majority` and `first_lt_last` follow the reference notebook exactly.
"""

from dataclasses import dataclass
from typing import Callable

import torch

from .model import ModelConfig


@dataclass(frozen=True)
class Task:
    name: str
    rule: str  # one line, shown in the app and the CLI
    skill: str  # what the model has to learn to solve it
    label: Callable[[torch.Tensor, int], torch.Tensor]  # (x (N, T), vocab_size) -> labels (N,) as int64


def _odd_majority(x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    return ((x % 2 == 1).sum(dim=1) > x.shape[1] / 2).long()


def _first_lt_last(x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    return (x[:, 0] < x[:, -1]).long()


def _many_distinct(x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    # 24 uniform draws from 16 values show about 12.6 distinct values on average; "more than 12" is ~54% positive.
    present = torch.zeros(x.shape[0], vocab_size, dtype=torch.bool).scatter_(1, x, True)
    return (present.sum(dim=1) > 12).long()


def _middle_high(x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    return (x[:, x.shape[1] // 2] >= vocab_size // 2).long()


def _sum_high(x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    # The sum's mean is T * (vocab_size - 1) / 2 (180 for the defaults); ties count as negative (~49% positive).
    return (2 * x.sum(dim=1) > x.shape[1] * (vocab_size - 1)).long()


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("odd_majority", "More than half of the tokens are odd.", "counting parity", _odd_majority),
        Task("first_lt_last", "The first token is less than the last token.", "attending to two positions",
             _first_lt_last),
        Task("many_distinct", "More than 12 distinct token values appear.", "counting distinct values",
             _many_distinct),
        Task("middle_high", "The middle token (position 12) is 8 or more.", "attending to one position",
             _middle_high),
        Task("sum_high", "The tokens sum to more than 180 (their expected sum).", "weighted counting", _sum_high),
    ]
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}") from None


def make_data(task: str, n: int, seed: int, config: ModelConfig = ModelConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw `n` examples for `task` from their own generator seeded with `seed`.

    Returns token ids (n, seq_len) as int64 and labels (n,) as int64. The global random generator is not
    touched, so making data never shifts a model's initialisation or batch order.
    """
    if n < 1:
        raise ValueError(f"the number of examples must be at least 1, got {n}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, config.vocab_size, (n, config.seq_len), generator=g)
    return x, get_task(task).label(x, config.vocab_size)
