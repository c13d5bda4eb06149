"""Build the model a fine-tuning method trains: full finetune, LoRA, or LoRA over a quantized frozen base."""

import torch
import torch.nn as nn

from .config import RunConfig
from .lora import TARGETABLE, inject_lora
from .model import TinyClassifier
from .quant import QuantConfig, quantize_model


def build_model(config: RunConfig, base_state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Seed the global generator with `config.train.seed`, build the model and prepare it for `config.method`.

    The order of random draws is fixed: the base weights first (skipped in effect when `base_state` replaces
    them), then each LoRA A in module order. Training continues on the same generator for its batch order.
    """
    config.validate()
    torch.manual_seed(config.train.seed)
    model = TinyClassifier(config.model)
    if base_state is not None:
        model.load_state_dict(base_state)
    if config.method == "full":
        return model
    if config.quant_scheme is not None:
        modules = config.lora.target_modules if config.quant.modules == "targets" else TARGETABLE
        quantize_model(model, QuantConfig(scheme=config.quant_scheme, modules=tuple(modules),
                                          block_size=config.quant.block_size, double_quant=config.quant.double_quant))
    return inject_lora(model, config.lora)
