"""The run-settings controls of the Train page, turned into a validated `RunConfig`."""

import math
import re

import streamlit as st

from tinylora.checkpoints import is_cached
from tinylora.config import (BASES, MAX_BATCH_SIZE, MAX_EPOCHS, MAX_R, METHOD_LABELS, METHODS, QuantOptions,
                             RunConfig, TrainConfig)
from tinylora.lora import TARGETABLE, LoRAConfig
from tinylora.quant import BLOCK_SIZES
from tinylora.tasks import TASKS

QUANT_MODULE_LABELS = {
    "all": "every frozen block linear",
    "targets": "only the LoRA targets (as the notebook)",
}
# TrainConfig.fast, with the modes in tinylora.fastpath.FAST_MODES
FAST_MODE_LABELS = {"auto": "default", "fused": "fused", "bf16": "fused bfloat16", "off": "eager"}


def parse_learning_rate(text: str) -> float:
    """Parse the learning-rate box; raise ValueError naming the text and the expected form."""
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"learning rate {text!r} is not a number; enter a positive number such as 5e-3") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"learning rate must be a positive finite number such as 5e-3, got {text.strip()!r}")
    return value


def parse_whole_number(text: str, name: str, example: int) -> int:
    """Parse a whole-number box; raise ValueError naming the box, the text and an example of the expected form."""
    text = text.strip()
    # ASCII digits only: int() also takes "1_0" and digits of other scripts, which a reader would not expect.
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ValueError(f"{name} {text!r} is not a whole number; enter one such as {example}")
    return int(text)


def whole_number_box(container, label: str, default: int, key: str, help: str | None = None,
                     disabled: bool = False) -> str:
    """Draw a text box for a whole number, starting at `default`; return its text for `parse_whole_number`.

    A number box keeps its last valid value when a typed one is out of its range or too large for the browser
    (20 digits). So a bad value would be used silently, and a text box is used instead.
    """
    st.session_state.setdefault(key, str(default))
    return container.text_input(label, key=key, persist_state="session", help=help, disabled=disabled)


LOAD_REQUEST = "_train_load"  # session key: the id of a run whose settings the Train page loads on its next run


def request_train_load(run_id: str) -> None:
    """Ask the Train page to load run `run_id`'s settings into its controls when it next runs.

    Another page sets only this request, because widget values set there can be overwritten: on the switch,
    the browser may send back the values the Train controls had when that page was last shown.
    """
    st.session_state[LOAD_REQUEST] = run_id


def config_widget_values(config: RunConfig, prefix: str) -> dict:
    """Return the controls' session-state values that show `config`, keyed by widget key."""
    return {
        f"{prefix}method": config.method,
        f"{prefix}task": config.task,
        f"{prefix}base": config.base,
        f"{prefix}r": str(config.lora.r),
        f"{prefix}lora_alpha": float(config.lora.lora_alpha),
        f"{prefix}use_rslora": config.lora.use_rslora,
        f"{prefix}targets": list(config.lora.target_modules),
        f"{prefix}quant_modules": config.quant.modules,
        f"{prefix}block_size": config.quant.block_size,
        f"{prefix}double_quant": config.quant.double_quant,
        f"{prefix}lr": f"{config.train.lr:g}",
        f"{prefix}epochs": str(config.train.epochs),
        f"{prefix}batch_size": str(config.train.batch_size),
        f"{prefix}seed": str(config.train.seed),
        f"{prefix}fast": config.train.fast,
    }


def apply_config_to_widgets(config: RunConfig, prefix: str) -> None:
    """Set the controls' values to `config`; call before the controls are drawn."""
    st.session_state.update(config_widget_values(config, prefix))


def config_from_widgets(prefix: str = "train_") -> tuple[RunConfig | None, str | None]:
    """Return (config, None) for the controls' values in session state, else (None, error message).

    A button callback calls this too: its session state already contains a value typed in a box just before
    the click, which the config computed in the previous script run does not.
    """
    d = RunConfig()
    state = st.session_state
    values = {key.removeprefix(prefix): state.get(key, default)
              for key, default in config_widget_values(d, prefix).items()}
    method = values["method"]
    uses_lora = method != "full"
    quant = d.quant
    if METHODS.get(method) is not None:
        quant = QuantOptions(modules=values["quant_modules"], block_size=quant.block_size,
                             double_quant=quant.double_quant)
    if METHODS.get(method) == "nf4":
        quant = QuantOptions(modules=quant.modules, block_size=int(values["block_size"]),
                             double_quant=bool(values["double_quant"]))
    try:
        config = RunConfig(
            method=method,
            task=values["task"],
            base=values["base"],
            lora=LoRAConfig(r=parse_whole_number(values["r"], "r", d.lora.r) if uses_lora else d.lora.r,
                            lora_alpha=float(values["lora_alpha"]), target_modules=tuple(values["targets"]),
                            use_rslora=bool(values["use_rslora"])),
            train=TrainConfig(lr=parse_learning_rate(values["lr"]),
                              epochs=parse_whole_number(values["epochs"], "epochs", d.train.epochs),
                              batch_size=parse_whole_number(values["batch_size"], "batch size", d.train.batch_size),
                              seed=parse_whole_number(values["seed"], "seed", d.train.seed),
                              fast=values["fast"]),
            quant=quant,
        )
        return config.validate(), None
    except ValueError as error:
        return None, str(error)


def run_config_controls(prefix: str = "train_", disabled: bool = False) -> tuple[RunConfig | None, str | None]:
    """Draw the controls and return (config, None) when the settings are valid, else (None, error message)."""
    # Defaults go into session state, never into the widgets: a widget given a default whose key a loaded run
    # already set makes Streamlit warn, and the value from session state wins anyway.
    d = RunConfig()
    for key, value in config_widget_values(d, prefix).items():
        st.session_state.setdefault(key, value)
    keep = "session"  # controls keep their values across page switches
    method = st.selectbox("Method", list(METHODS), format_func=METHOD_LABELS.get,
                          key=f"{prefix}method", disabled=disabled, persist_state=keep,
                          help="Full finetune trains every weight; LoRA freezes the base and trains low-rank "
                               "adapters; QLoRA also stores the frozen base quantized.")
    task = st.selectbox("Task", list(TASKS), key=f"{prefix}task",
                        disabled=disabled, persist_state=keep, help="The rule that labels each 24-token sequence.")
    st.caption(TASKS[task].rule)
    base = st.selectbox("Base", list(BASES), key=f"{prefix}base", disabled=disabled,
                        persist_state=keep, help="The frozen starting weights: the seed's random initialisation, or "
                                                 "a model fully finetuned on one task (trained once, then cached).")
    if not is_cached(base):
        st.caption("This base is not trained yet: the run trains and caches it first.")

    uses_lora = method != "full"
    col_r, col_alpha = st.columns(2)
    # Whole numbers are text boxes (see whole_number_box): the parsers and RunConfig.validate name a bad value.
    whole_number_box(col_r, "r (rank)", d.lora.r, f"{prefix}r", disabled=disabled or not uses_lora,
                     help=f"Rank of the update B @ A, from 1 to {MAX_R}.")
    col_alpha.number_input("lora_alpha", step=1.0, key=f"{prefix}lora_alpha", disabled=disabled or not uses_lora,
                           persist_state=keep,
                           help="The update is scaled by lora_alpha / r, or by lora_alpha / sqrt(r) with rsLoRA.")
    st.checkbox("rsLoRA scaling: lora_alpha / sqrt(r)", key=f"{prefix}use_rslora", disabled=disabled or not uses_lora,
                persist_state=keep,
                help="Rank-stabilized LoRA (Kalajdzievski 2023) scales the update by lora_alpha / sqrt(r) instead "
                     "of lora_alpha / r, so large ranks still learn at a useful speed.")
    st.multiselect("Target modules", list(TARGETABLE), key=f"{prefix}targets", disabled=disabled or not uses_lora,
                   persist_state=keep,
                   help="The linear layers in every block that get an adapter: qkv (64 -> 192), proj (64 -> 64), "
                        "fc1 (64 -> 256), fc2 (256 -> 64).")
    if METHODS[method] is not None:
        st.selectbox("Quantize", list(QUANT_MODULE_LABELS), format_func=QUANT_MODULE_LABELS.get,
                     key=f"{prefix}quant_modules", disabled=disabled, persist_state=keep,
                     help="Which frozen linears the QLoRA base stores quantized.")
    if METHODS[method] == "nf4":
        st.selectbox("NF4 block size", BLOCK_SIZES, key=f"{prefix}block_size", disabled=disabled, persist_state=keep,
                     help="Weights that share one absmax scale.")
        st.checkbox("Double quantization", key=f"{prefix}double_quant", disabled=disabled, persist_state=keep,
                    help="Store the per-block absmax values as 8-bit codes too.")

    st.text_input("Learning rate", key=f"{prefix}lr", disabled=disabled, persist_state=keep,
                  help="AdamW learning rate, e.g. 5e-3.")
    col_epochs, col_batch, col_seed = st.columns(3, vertical_alignment="bottom")  # boxes line up under wrapped labels
    whole_number_box(col_epochs, "Epochs", d.train.epochs, f"{prefix}epochs", disabled=disabled,
                     help=f"Passes over the training examples, from 1 to {MAX_EPOCHS}.")
    whole_number_box(col_batch, "Batch size", d.train.batch_size, f"{prefix}batch_size", disabled=disabled,
                     help=f"Examples per step, from 1 to {MAX_BATCH_SIZE}.")
    whole_number_box(col_seed, "Seed", d.train.seed, f"{prefix}seed", disabled=disabled,
                     help="Fixes model and adapter initialisation and the batch order.")
    st.selectbox("Step computation", list(FAST_MODE_LABELS), format_func=FAST_MODE_LABELS.get, key=f"{prefix}fast",
                 disabled=disabled, persist_state=keep,
                 help="How each training step is computed. **default**: LoRA and QLoRA on the fused path, whose "
                      "losses differ from the reference's in their last bits, and a full finetune on the eager "
                      "path, bit for bit equal to the reference. **fused**: the fused path for a full finetune "
                      "too, faster, but its sums in another order change a full finetune's results. **fused "
                      "bfloat16**: products in bfloat16, which changes results of every method. **eager**: every "
                      "method as the reference computes it, the slowest. BENCHMARKS.md has each mode's speed and "
                      "its accuracy over five seeds.")
    return config_from_widgets(prefix)
