"""The run-settings controls of the Train page, turned into a validated `RunConfig`."""

import math

import streamlit as st

from tinylora.checkpoints import is_cached
from tinylora.config import BASES, METHOD_LABELS, METHODS, QuantOptions, RunConfig, TrainConfig
from tinylora.lora import TARGETABLE, LoRAConfig
from tinylora.quant import BLOCK_SIZES
from tinylora.tasks import TASKS

QUANT_MODULE_LABELS = {
    "all": "every frozen block linear",
    "targets": "only the LoRA targets (as the notebook)",
}


def parse_learning_rate(text: str) -> float:
    """Parse the learning-rate box; raise ValueError naming the text and the expected form."""
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"learning rate {text!r} is not a number; enter a positive number such as 5e-3") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"learning rate must be a positive finite number such as 5e-3, got {text.strip()!r}")
    return value


LOAD_REQUEST = "_train_load"  # session key: the id of a run whose settings the Train page loads on its next run


def request_train_load(run_id: str) -> None:
    """Ask the Train page to load run `run_id`'s settings into its controls when it next runs.

    Another page sets only this request, because widget values set there can be overwritten: on the switch,
    the browser may send back the values the Train controls had when that page was last shown.
    """
    st.session_state[LOAD_REQUEST] = run_id


def apply_config_to_widgets(config: RunConfig, prefix: str) -> None:
    """Set the controls' values to `config`; call before the controls are drawn."""
    st.session_state[f"{prefix}method"] = config.method
    st.session_state[f"{prefix}task"] = config.task
    st.session_state[f"{prefix}r"] = config.lora.r
    st.session_state[f"{prefix}lora_alpha"] = float(config.lora.lora_alpha)
    st.session_state[f"{prefix}use_rslora"] = config.lora.use_rslora
    st.session_state[f"{prefix}targets"] = list(config.lora.target_modules)
    st.session_state[f"{prefix}lr"] = f"{config.train.lr:g}"
    st.session_state[f"{prefix}epochs"] = config.train.epochs
    st.session_state[f"{prefix}batch_size"] = config.train.batch_size
    st.session_state[f"{prefix}seed"] = config.train.seed
    st.session_state[f"{prefix}quant_modules"] = config.quant.modules
    st.session_state[f"{prefix}base"] = config.base
    st.session_state[f"{prefix}block_size"] = config.quant.block_size
    st.session_state[f"{prefix}double_quant"] = config.quant.double_quant


def run_config_controls(prefix: str = "train_", disabled: bool = False) -> tuple[RunConfig | None, str | None]:
    """Draw the controls and return (config, None) when the settings are valid, else (None, error message)."""
    d, dl, dt = RunConfig(), LoRAConfig(), TrainConfig()
    keep = "session"  # controls keep their values across page switches
    method = st.selectbox("Method", list(METHODS), format_func=METHOD_LABELS.get, index=list(METHODS).index(d.method),
                          key=f"{prefix}method", disabled=disabled, persist_state=keep,
                          help="Full finetune trains every weight; LoRA freezes the base and trains low-rank "
                               "adapters; QLoRA also stores the frozen base quantized.")
    task = st.selectbox("Task", list(TASKS), index=list(TASKS).index(d.task), key=f"{prefix}task",
                        disabled=disabled, persist_state=keep, help="The rule that labels each 24-token sequence.")
    st.caption(TASKS[task].rule)
    base = st.selectbox("Base", list(BASES), index=BASES.index(d.base), key=f"{prefix}base", disabled=disabled,
                        persist_state=keep, help="The frozen starting weights: the seed's random initialisation, or "
                                                 "a model fully finetuned on one task (trained once, then cached).")
    if not is_cached(base):
        st.caption("This base is not trained yet: the run trains and caches it first.")

    uses_lora = method != "full"
    col_r, col_alpha = st.columns(2)
    # No min_value or max_value on these boxes: Streamlit keeps the last valid value when a typed one is out of
    # range, so a bad value would train silently. RunConfig.validate names it and its range instead.
    r = col_r.number_input("r (rank)", value=dl.r, step=1, key=f"{prefix}r",
                           disabled=disabled or not uses_lora, persist_state=keep,
                           help="Rank of the update B @ A, from 1 to 64.")
    lora_alpha = col_alpha.number_input("lora_alpha", value=float(dl.lora_alpha),
                                        step=1.0, key=f"{prefix}lora_alpha", disabled=disabled or not uses_lora,
                                        persist_state=keep, help="The update is scaled by lora_alpha / r, or by "
                                                                 "lora_alpha / sqrt(r) with rsLoRA.")
    use_rslora = st.checkbox("rsLoRA scaling: lora_alpha / sqrt(r)", value=dl.use_rslora, key=f"{prefix}use_rslora",
                             disabled=disabled or not uses_lora, persist_state=keep,
                             help="Rank-stabilized LoRA (Kalajdzievski 2023) scales the update by lora_alpha / "
                                  "sqrt(r) instead of lora_alpha / r, so large ranks still learn at a useful speed.")
    targets = st.multiselect("Target modules", list(TARGETABLE), default=list(dl.target_modules),
                             key=f"{prefix}targets", disabled=disabled or not uses_lora, persist_state=keep,
                             help="The linear layers in every block that get an adapter: qkv (64 -> 192), "
                                  "proj (64 -> 64), fc1 (64 -> 256), fc2 (256 -> 64).")
    quant_modules, block_size, double_quant = d.quant.modules, d.quant.block_size, d.quant.double_quant
    if METHODS[method] is not None:
        quant_modules = st.selectbox("Quantize", list(QUANT_MODULE_LABELS), format_func=QUANT_MODULE_LABELS.get,
                                     key=f"{prefix}quant_modules", disabled=disabled, persist_state=keep,
                                     help="Which frozen linears the QLoRA base stores quantized.")
    if METHODS[method] == "nf4":
        col_block, col_double = st.columns(2)
        block_size = col_block.selectbox("NF4 block size", BLOCK_SIZES, index=BLOCK_SIZES.index(block_size),
                                         key=f"{prefix}block_size", disabled=disabled, persist_state=keep,
                                         help="Weights that share one absmax scale.")
        double_quant = col_double.checkbox("Double quantization", value=double_quant, key=f"{prefix}double_quant",
                                           disabled=disabled, persist_state=keep,
                                           help="Store the per-block absmax values as 8-bit codes too.")

    lr_text = st.text_input("Learning rate", value=f"{dt.lr:g}", key=f"{prefix}lr", disabled=disabled,
                            persist_state=keep, help="AdamW learning rate, e.g. 5e-3.")
    col_epochs, col_batch, col_seed = st.columns(3)
    epochs = col_epochs.number_input("Epochs", value=dt.epochs, step=1,
                                     key=f"{prefix}epochs", disabled=disabled, persist_state=keep)
    batch_size = col_batch.number_input("Batch size", value=dt.batch_size, step=1,
                                        key=f"{prefix}batch_size", disabled=disabled, persist_state=keep)
    seed = col_seed.number_input("Seed", value=dt.seed, step=1,
                                 key=f"{prefix}seed", disabled=disabled, persist_state=keep,
                                 help="Fixes model and adapter initialisation and the batch order.")
    try:
        config = RunConfig(
            method=method,
            task=task,
            base=base,
            lora=LoRAConfig(r=int(r), lora_alpha=float(lora_alpha), target_modules=tuple(targets),
                            use_rslora=bool(use_rslora)),
            train=TrainConfig(lr=parse_learning_rate(lr_text), epochs=int(epochs), batch_size=int(batch_size),
                              seed=int(seed)),
            quant=QuantOptions(modules=quant_modules, block_size=int(block_size), double_quant=bool(double_quant)),
        )
        return config.validate(), None
    except ValueError as error:
        return None, str(error)
