"""The tiny transformer classifier that every method fine-tunes.

A pre-norm encoder over a 16-token vocabulary: a [CLS] token is prepended to each sequence, and its final
hidden state feeds a linear classifier. With the defaults it has 202,114 parameters. The modules are built in
a fixed order (embeddings, then each block's ln1, qkv, proj, ln2, fc1, fc2, then the final norm and head), so
`torch.manual_seed(s)` followed by `TinyClassifier()` always draws the same initial weights.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 16  # token ids 0..15; id 16 is [CLS]
    seq_len: int = 24  # tokens per example, before [CLS] is prepended
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 4
    n_classes: int = 2
    n_task_ids: int = 0  # when > 0, a task embedding is added to [CLS] (joint multi-task training)

    @property
    def cls_id(self) -> int:
        return self.vocab_size


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, then a 4x MLP with GELU."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.fc2 = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        nh = self.n_heads

        # Attention: split heads to (B, nh, T, hs)
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q = q.view(B, T, nh, D // nh).transpose(1, 2)
        k = k.view(B, T, nh, D // nh).transpose(1, 2)
        v = v.view(B, T, nh, D // nh).transpose(1, 2)
        attn = F.scaled_dot_product_attention(q, k, v)
        attn = attn.transpose(1, 2).contiguous().view(B, T, D)  # (B, T, D)
        x = x + self.proj(attn)

        # MLP
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyClassifier(nn.Module):
    """Token + position embeddings, `n_layers` blocks, a final LayerNorm and a classifier on [CLS]."""

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        d = config.d_model
        self.tok = nn.Embedding(config.vocab_size + 1, d)  # +1 for [CLS]
        self.pos = nn.Embedding(config.seq_len + 1, d)
        self.blocks = nn.ModuleList([Block(d, config.n_heads) for _ in range(config.n_layers)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.n_classes)
        # Built last so that a model with task ids draws the same base weights as one without.
        self.task_emb = nn.Embedding(config.n_task_ids, d) if config.n_task_ids else None

    def forward(self, x: torch.Tensor, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Return logits (B, n_classes) for token ids `x` (B, T); `task_ids` (B,) tag [CLS] when set."""
        B, T = x.shape
        cls = torch.full((B, 1), self.config.cls_id, dtype=x.dtype, device=x.device)
        x = torch.cat([cls, x], dim=1)  # (B, T + 1)
        pos = torch.arange(T + 1, device=x.device)
        h = self.tok(x) + self.pos(pos)[None]  # (B, T + 1, D)
        if task_ids is not None:
            if self.task_emb is None:
                raise ValueError("task_ids were given but the model was built with n_task_ids=0")
            h[:, 0] = h[:, 0] + self.task_emb(task_ids)
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln(h[:, 0]))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Count parameters as weights, never as bytes.

    A quantized frozen weight is stored as integer buffers (two 4-bit codes share a byte), but each of its
    elements is still one parameter of the model, so modules that expose `frozen_numel` add it to the total.
    """
    total = sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
    if not trainable_only:
        total += sum(getattr(m, "frozen_numel", 0) for m in model.modules())
    return total
