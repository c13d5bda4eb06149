"""The baseline every benchmark ratio is taken against: the reference notebook's recipe as plain eager PyTorch.

Deliberately simple and independent of `tinylora`'s modules: a pre-norm 4-block transformer with a [CLS]
classifier, LoRA as two parameter matrices added to a frozen `nn.Linear` (Hu et al. 2021), a QLoRA-style base
whose frozen block linears are stored quantized and dequantized on every forward pass (Dettmers et al. 2023),
AdamW, batches of 64 and one evaluation per epoch. The modules are built and the random draws made in the same
order as `tinylora`, so with the same seed both start from the same weights and see the same batches.

Only the int8 per-tensor scheme is written out here, as the notebook does. Any other scheme (such as NF4)
borrows its quantize and dequantize functions from `tinylora.quant`, so its timing covers this eager loop
with that storage format.
"""

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB, SEQ_LEN, WIDTH, HEADS, LAYERS = 16, 24, 64, 4, 4
BLOCK_LINEARS = ("qkv", "proj", "fc1", "fc2")


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(WIDTH)
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH, bias=False)
        self.proj = nn.Linear(WIDTH, WIDTH)
        self.ln2 = nn.LayerNorm(WIDTH)
        self.fc1 = nn.Linear(WIDTH, 4 * WIDTH)
        self.fc2 = nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q, k, v = (t.view(B, T, HEADS, D // HEADS).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).contiguous().view(B, T, D)
        x = x + self.proj(attn)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class Classifier(nn.Module):
    def __init__(self, n_task_ids: int = 0):
        super().__init__()
        self.tok = nn.Embedding(VOCAB + 1, WIDTH)  # the extra id is [CLS]
        self.pos = nn.Embedding(SEQ_LEN + 1, WIDTH)
        self.blocks = nn.ModuleList([Block() for _ in range(LAYERS)])
        self.ln = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, 2)
        # Built last, so that the other weights are drawn as without it; added to [CLS] when task ids are given.
        self.task_emb = nn.Embedding(n_task_ids, WIDTH) if n_task_ids else None

    def forward(self, x, task_ids=None):
        cls = torch.full((x.shape[0], 1), VOCAB, dtype=x.dtype)
        x = torch.cat([cls, x], dim=1)
        h = self.tok(x) + self.pos(torch.arange(x.shape[1]))[None]
        if task_ids is not None:
            h[:, 0] = h[:, 0] + self.task_emb(task_ids)
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln(h[:, 0]))


class QuantLinear(nn.Module):
    """A frozen linear whose weight is kept only as quantized codes and dequantized on every call."""

    def __init__(self, base: nn.Linear, scheme: str):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.shape = base.weight.shape
        self.scheme = None if scheme == "int8" else _borrowed_scheme(scheme)
        w = base.weight.detach()
        if self.scheme is None:
            scale = w.abs().max() / 127.0
            self.state = {"codes": (w / scale).round().clamp(-127, 127).to(torch.int8), "scale": scale.reshape(1)}
        else:
            self.state = self.scheme.quantize(w)
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach().clone(), requires_grad=False)

    def forward(self, x):
        if self.scheme is None:
            weight = self.state["codes"].float() * self.state["scale"]
        else:
            weight = self.scheme.dequantize(self.state, self.shape)
        return F.linear(x, weight, self.bias)


class LoRA(nn.Module):
    """y = base(x) + (lora_alpha / r) * (x A^T) B^T, with A (r x in) Kaiming-uniform and B (out x r) zero."""

    def __init__(self, base: nn.Module, r: int, lora_alpha: float):
        super().__init__()
        self.base = base
        self.A = nn.Parameter(torch.empty(r, base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scaling = lora_alpha / r

    def forward(self, x):
        return self.base(x) + (x @ self.A.T @ self.B.T) * self.scaling


def _borrowed_scheme(name: str):
    from tinylora.quant import get_scheme  # only for schemes the notebook does not have

    return get_scheme(name)


def _replace(model: nn.Module, names, wrap) -> None:
    # Collect first: replacing children while walking the module tree would skip some.
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if name in names]
    for parent, name, child in targets:
        setattr(parent, name, wrap(child))


def build(method: str, seed: int = 0, scheme: str | None = None, r: int = 4, lora_alpha: float = 8.0,
          targets=("qkv", "proj"), quantized=BLOCK_LINEARS) -> nn.Module:
    """Seed, build the classifier and prepare it for `method` ("full", "lora" or a QLoRA method with `scheme`)."""
    torch.manual_seed(seed)
    model = Classifier()
    if method == "full":
        return model
    for p in model.parameters():
        p.requires_grad = False
    if scheme is not None:
        _replace(model, quantized, lambda child: QuantLinear(child, scheme))
    _replace(model, targets, lambda child: LoRA(child, r, lora_alpha))
    for p in model.head.parameters():
        p.requires_grad = True
    return model


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw `n` examples of the odd-majority task: label 1 when more than half of the 24 tokens are odd."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (n, SEQ_LEN), generator=g)
    return x, ((x % 2 == 1).sum(dim=1) > SEQ_LEN / 2).long()


@dataclass
class RunResult:
    losses: list[float]  # training loss of every step
    accuracies: list[float]  # validation accuracy after every epoch
    seconds: float  # the whole run: steps and evaluations
    eval_seconds: float  # the evaluations alone

    @property
    def steps(self) -> int:
        return len(self.losses)


def events(model: nn.Module, epochs: int = 8, lr: float = 5e-3, batch_size: int = 64, n_train: int = 1024,
           n_val: int = 512):
    """Train with AdamW on seed-1 data; yield ("step", loss) after every step and ("eval", accuracy) per epoch."""
    x, y = make_data(n_train, 1)
    xv, yv = make_data(n_val, 2)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n_train)
        for i in range(0, n_train, batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            yield "step", loss.item()

        model.eval()
        with torch.no_grad():
            accuracy = (model(xv).argmax(-1) == yv).float().mean().item()
        yield "eval", accuracy  # outside no_grad, which would otherwise stay off while this generator waits


def train(model: nn.Module, epochs: int = 8, lr: float = 5e-3, batch_size: int = 64, n_train: int = 1024,
          n_val: int = 512) -> RunResult:
    """Run `events` to the end, timing the whole run and the evaluations."""
    losses, accuracies, eval_seconds = [], [], 0.0
    start = previous = time.perf_counter()
    for kind, value in events(model, epochs, lr, batch_size, n_train, n_val):
        now = time.perf_counter()
        if kind == "step":
            losses.append(value)
        else:
            accuracies.append(value)
            eval_seconds += now - previous
        previous = now
    return RunResult(losses, accuracies, time.perf_counter() - start, eval_seconds)
