"""`python -m bench.lab_reference`: the experiments of `python -m tinylora lab` as plain eager PyTorch, in turn.

The baseline the lab section of the suite times `python -m tinylora lab` against. It uses the model, LoRA and
int8 base of `bench.reference` and runs, one after another in this process, the same trainings with the same
settings:

1. the methods compared: full finetuning, LoRA and QLoRA (int8 base) on `odd_majority`, 8 epochs each;
2. one adapter per task (`odd_majority` on data seeds 1 and 2, `first_lt_last` on 3 and 4) over the frozen
   base of seed 0, 8 epochs each, then every adapter and the plain base evaluated on both tasks;
3. forgetting: one adapter trained 6 epochs on `odd_majority`, then 12 on `first_lt_last`, both tasks
   evaluated at the start and after each phase;
4. joint training: one adapter (r=8, lora_alpha=16) for 10 epochs on both training sets mixed, with a task
   embedding added to [CLS], both tasks evaluated at the start and the end.

Every training uses AdamW at learning rate 5e-3 in batches of 64, 1,024 training and 512 validation examples
per task, and evaluates once per epoch where the lab does (the methods and the adapters). It prints one JSON
object with the accuracies and the seconds taken.
"""

import copy
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import reference
from .reference import SEQ_LEN, VOCAB, Classifier, LoRA

TARGETS = ("qkv", "proj")


def make_task_data(task: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw `n` examples of `task` ("odd_majority" or "first_lt_last") from a generator seeded with `seed`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (n, SEQ_LEN), generator=g)
    if task == "odd_majority":
        return x, ((x % 2 == 1).sum(dim=1) > SEQ_LEN / 2).long()
    return x, (x[:, 0] < x[:, -1]).long()


def add_lora(model: nn.Module, r: int = 4, lora_alpha: float = 8.0) -> nn.Module:
    """Freeze `model`, wrap its attention linears with LoRA and keep the head trainable."""
    for p in model.parameters():
        p.requires_grad = False
    reference._replace(model, TARGETS, lambda child: LoRA(child, r, lora_alpha))
    for p in model.head.parameters():
        p.requires_grad = True
    return model


@torch.no_grad()
def accuracy(model: nn.Module, data, task_id: int | None = None) -> float:
    x, y = data
    model.eval()
    ids = None if task_id is None else torch.full((len(x),), task_id, dtype=torch.long)
    result = (model(x, ids).argmax(-1) == y).float().mean().item()
    model.train()
    return result


def fit(model: nn.Module, x, y, epochs: int, task_ids=None, val=None) -> list[float]:
    """Train with AdamW; evaluate on `val` after every epoch when given and return those accuracies."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    accuracies = []
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(x[idx], None if task_ids is None else task_ids[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if val is not None:
            accuracies.append(accuracy(model, val))
    return accuracies


def run() -> dict:
    start = time.perf_counter()
    tasks = {"odd_majority": (1, 2), "first_lt_last": (3, 4)}
    data = {task: (make_task_data(task, 1024, a), make_task_data(task, 512, b)) for task, (a, b) in tasks.items()}
    out = {}

    # The methods compared
    (x, y), val = data["odd_majority"]
    for method, scheme in (("full", None), ("lora", None), ("qlora-int8", "int8")):
        model = reference.build(method, 0, scheme)
        out[method] = fit(model, x, y, 8, val=val)[-1]

    # One adapter per task over one base
    torch.manual_seed(0)
    base = Classifier()
    adapters = {}
    for task, ((x, y), val) in data.items():
        adapters[task] = add_lora(copy.deepcopy(base))
        fit(adapters[task], x, y, 8, val=val)
    out["matrix"] = [[accuracy(model, val) for _, val in data.values()] for model in [*adapters.values(), base]]

    # Forgetting: A, then B
    torch.manual_seed(0)
    model = add_lora(Classifier())
    out["forgetting"] = [[accuracy(model, val) for _, val in data.values()]]
    for task, epochs in (("odd_majority", 6), ("first_lt_last", 12)):
        (x, y), _ = data[task]
        fit(model, x, y, epochs)
        out["forgetting"].append([accuracy(model, val) for _, val in data.values()])

    # Joint training with task ids
    torch.manual_seed(0)
    model = add_lora(Classifier(n_task_ids=2), r=8, lora_alpha=16.0)
    x = torch.cat([train[0] for train, _ in data.values()])
    y = torch.cat([train[1] for train, _ in data.values()])
    ids = torch.cat([torch.full((len(train[0]),), i, dtype=torch.long) for i, (train, _) in enumerate(data.values())])
    out["joint"] = [[accuracy(model, val, i) for i, (_, val) in enumerate(data.values())]]
    fit(model, x, y, 10, task_ids=ids)
    out["joint"].append([accuracy(model, val, i) for i, (_, val) in enumerate(data.values())])

    out["seconds"] = time.perf_counter() - start
    return out


def main(argv: list[str]) -> int:
    torch.set_num_threads(int(argv[0]) if argv else 1)
    print(json.dumps(run()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
