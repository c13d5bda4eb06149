"""The tiny model's memory arithmetic applied to published open models.

`PRESETS` contains the shapes of three well-known decoder models, read from their published Hugging Face
`config.json` files (the copies opened are cited next to each preset). `llm_architecture` turns such a config
into the `Architecture` that `tinylora.memory.estimate_memory` understands, and `calculator_table` lists full
finetuning, LoRA and QLoRA side by side, so an adapter's size in MB sits next to the checkpoint's in GB.

The estimate covers weights, gradients and AdamW state. It leaves out activations, the KV cache and framework
overhead, which depend on batch size and sequence length.
"""

from dataclasses import dataclass

import pandas as pd

from .config import QuantOptions
from .memory import MEMORY_VARIANTS, Architecture, LinearSpec, estimate_memory, variant_label

ATTENTION_TARGETS = ("q_proj", "v_proj")  # the query and value projections only
ALL_LINEAR_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LLMConfig:
    """The `config.json` fields of a Llama-style decoder that fix its parameter count."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    torch_dtype: str  # the published checkpoint's dtype
    source: str


PRESETS = {
    preset.name: preset
    for preset in [
        # Copy of meta-llama/Llama-2-7b-hf's config.json at
        # https://huggingface.co/philschmid/Llama-2-7b-hf/blame/5cf88eca9b61635bca05852e274f61b17f820481/config.json
        LLMConfig("Llama-2-7B", hidden_size=4096, num_hidden_layers=32, intermediate_size=11008,
                  num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False,
                  torch_dtype="float16", source="huggingface.co/meta-llama/Llama-2-7b-hf config.json"),
        # Fine-tune upload whose config.json names mistralai/Mistral-7B-v0.1 as its base, same shapes:
        # https://huggingface.co/noutcheu/your_repos_hub/blob/main/config.json
        LLMConfig("Mistral-7B-v0.1", hidden_size=4096, num_hidden_layers=32, intermediate_size=14336,
                  num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False,
                  torch_dtype="bfloat16", source="huggingface.co/mistralai/Mistral-7B-v0.1 config.json"),
        # Copy of meta-llama/Meta-Llama-3-8B's config.json at
        # https://huggingface.co/pandyamarut/Meta-Llama-3-8B/blob/3689724debf35846edda50e9442887aa41c7157c/config.json
        LLMConfig("Llama-3-8B", hidden_size=4096, num_hidden_layers=32, intermediate_size=14336,
                  num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False,
                  torch_dtype="bfloat16", source="huggingface.co/meta-llama/Meta-Llama-3-8B config.json"),
    ]
}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def get_preset(name: str) -> LLMConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def llm_architecture(config: LLMConfig) -> Architecture:
    """Describe a Llama-style decoder: 7 bias-free linears per block, 2 RMSNorms, embeddings and an LM head."""
    h, i = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)  # grouped-query attention shrinks k and v
    linears = (LinearSpec("q_proj", h, h), LinearSpec("k_proj", h, kv), LinearSpec("v_proj", h, kv),
               LinearSpec("o_proj", h, h), LinearSpec("gate_proj", h, i), LinearSpec("up_proj", h, i),
               LinearSpec("down_proj", i, h))
    embeddings = config.vocab_size * h * (1 if config.tie_word_embeddings else 2)  # embed_tokens and lm_head
    norms = config.num_hidden_layers * 2 * h + h
    n_tensors = (1 if config.tie_word_embeddings else 2) + config.num_hidden_layers * (len(linears) + 2) + 1
    return Architecture(config.name, config.num_hidden_layers, linears, embeddings + norms, n_tensors,
                        float_bytes=DTYPE_BYTES[config.torch_dtype], source=config.source)


def calculator_table(preset: str | LLMConfig, r: int = 8, target_modules: tuple[str, ...] = ATTENTION_TARGETS,
                     block_size: int = 64) -> pd.DataFrame:
    """Return one row per method variant with its parameters and training memory on a published model.

    The frozen base keeps the checkpoint's dtype (16-bit). Under QLoRA every block linear is quantized while
    the embeddings, norms and LM head stay 16-bit. Trainable weights, gradients and AdamW
    state are float32, for full finetuning too. Columns: model, method, double_quant, label, r,
    target_modules, and the keys of `estimate_memory` (byte counts).
    """
    config = get_preset(preset) if isinstance(preset, str) else preset
    arch = llm_architecture(config)
    if not 1 <= r <= config.hidden_size:
        raise ValueError(f"r must be between 1 and {config.hidden_size} for {config.name}, got {r}")
    for module in target_modules:
        arch.linear(module)
    rows = []
    for method, double_quant in MEMORY_VARIANTS:
        quant = QuantOptions(block_size=block_size, double_quant=double_quant)
        rows.append({"model": config.name, "method": method, "double_quant": double_quant,
                     "label": variant_label(method, double_quant), "r": None if method == "full" else r,
                     "target_modules": "" if method == "full" else ",".join(target_modules),
                     **estimate_memory(arch, method, r, tuple(target_modules), quant)})
    return pd.DataFrame(rows)


def format_bytes(n: float) -> str:
    """Format a byte count with binary prefixes: 1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
