"""Parameters and memory: what full finetuning, LoRA and QLoRA train and store, here and on 7B models."""

import pandas as pd
import streamlit as st

from tinylora.calculator import ALL_LINEAR_TARGETS, ATTENTION_TARGETS, DTYPE_BYTES, PRESETS, LLMConfig, format_bytes
from tinylora.config import METHOD_LABELS, METHODS
from tinylora.memory import RANKS, TARGET_SETS, tiny_architecture
from tinylora.quant import BLOCK_SIZES
from ui import cached
from ui.charts import breakdown_chart, memory_chart, trainable_parameters_chart
from ui.common import page_header
from ui.controls import parse_whole_number, whole_number_box

KEEP = "session"
BYTE_COLUMNS = {"frozen_base_bytes": "frozen base", "trainable_bytes": "trainable weights",
                "gradient_bytes": "gradients", "optimizer_bytes": "AdamW state",
                "dequantized_copy_bytes": "float32 copy while training", "total_bytes": "total"}
CALCULATOR_FIELDS = {"hidden_size": "hidden size", "num_hidden_layers": "layers", "intermediate_size": "MLP size",
                     "num_attention_heads": "attention heads", "num_key_value_heads": "key/value heads",
                     "vocab_size": "vocabulary"}
CUSTOM = "Custom"


def memory_table_view(table: pd.DataFrame) -> pd.DataFrame:
    """Return the memory rows with human-readable byte sizes, for display."""
    view = table[["label", "trainable", "percent_of_full"]].copy()
    for column, name in BYTE_COLUMNS.items():
        view[name] = table[column].map(format_bytes)
    return view


page_header("Parameters and memory", "How many weights each method trains, and the memory that training needs: "
                                     "the frozen base, the trainable weights, their gradients and AdamW's state. "
                                     "The same arithmetic then sizes real 7B models.")
PERCENT = st.column_config.NumberColumn("% of full finetune", format="%.2f%%")

# Trainable parameters

st.subheader("Trainable parameters")
trainable = cached.trainable_parameters()
st.plotly_chart(trainable_parameters_chart(trainable), key="params_trainable_chart", config={"displayModeBar": False})
lora_counts = trainable[trainable.method == "lora"].set_index(["target_set", "r"]).trainable
qlora_counts = trainable[trainable.method == "qlora-nf4"].set_index(["target_set", "r"]).trainable
same = "the same" if lora_counts.equals(qlora_counts) else "different"
st.caption(f"Counted on built models. QLoRA trains {same} adapters as LoRA at every rank, and both also train "
           f"the {tiny_architecture().head_parameters:,}-parameter classifier head; "
           f"only the frozen base's storage differs.")
with st.expander("Table", expanded=False):
    st.container(key="params_trainable_table").dataframe(trainable.drop(columns=["estimated"]), hide_index=True,
                 column_config={"trainable": st.column_config.NumberColumn("trainable", format="localized"),
                                "percent_of_full": PERCENT})

# Per-layer breakdown and training memory

st.subheader("Per layer, and training memory")
col_method, col_r, col_targets = st.columns(3)
col_quant, col_block, col_double = st.columns(3, vertical_alignment="bottom")
method = col_method.selectbox("Method", list(METHODS), index=list(METHODS).index("qlora-nf4"),
                              format_func=METHOD_LABELS.get, key="params_method", persist_state=KEEP)
r = col_r.selectbox("r", RANKS, index=RANKS.index(4), key="params_r", persist_state=KEEP)
target_set = col_targets.selectbox("Target modules", list(TARGET_SETS), key="params_targets", persist_state=KEEP,
                                   format_func=lambda name: f"{name} ({'+'.join(TARGET_SETS[name])})")
modules = col_quant.selectbox("Quantize", ["all", "targets"], key="params_quant_modules", persist_state=KEEP,
                              format_func={"all": "every block linear", "targets": "only the targets"}.get)
block_size = col_block.selectbox("NF4 block size", BLOCK_SIZES, index=BLOCK_SIZES.index(64), key="params_block_size",
                                 persist_state=KEEP)
double_quant = col_double.checkbox("Double quantization", value=True, key="params_double_quant", persist_state=KEEP,
                                   help="For the per-layer breakdown; the memory chart shows NF4 both ways.")
targets = TARGET_SETS[target_set]

modules_table, layers_table = cached.parameter_breakdown(method, r, targets, modules, block_size, double_quant)
st.plotly_chart(breakdown_chart(layers_table), key="params_breakdown_chart", config={"displayModeBar": False})
with st.expander("Per-module table", expanded=False):
    st.container(key="params_breakdown_table").dataframe(modules_table, hide_index=True, column_config={
        "parameters": st.column_config.NumberColumn("parameters", format="localized"),
        "trainable": st.column_config.NumberColumn("trainable", format="localized"),
        "bytes": st.column_config.NumberColumn("bytes", format="localized")})

memory = cached.training_memory(r, targets, modules, block_size)
st.plotly_chart(memory_chart(memory, f"Training memory of the tiny classifier (r={r} on {'+'.join(targets)})"),
                key="params_memory_chart", config={"displayModeBar": False})
st.container(key="params_memory_table").dataframe(memory_table_view(memory), hide_index=True,
             column_config={"label": st.column_config.TextColumn("method"),
                            "trainable": st.column_config.NumberColumn("trainable", format="localized"),
                            "percent_of_full": PERCENT})
st.caption("Measured: each method's model is built and takes one AdamW step, and the bytes of every tensor that "
           "then exists are added up (the arithmetic estimate agrees exactly). Activations are left out: they "
           "depend on batch size and sequence length, not on the method. A QLoRA row includes the float32 copy of "
           "the quantized base that the fast training path keeps for the whole run, so that it does not "
           "dequantize every step; the stored base stays quantized, and `--no-cache-dequantized` drops the copy.")

# Calculator

st.subheader("Calculator for published models")


def load_preset() -> None:
    """Copy the chosen preset's shapes into the calculator's inputs (a selectbox callback)."""
    preset = PRESETS.get(st.session_state.calc_preset)
    if preset is not None:
        for field in CALCULATOR_FIELDS:
            st.session_state[f"calc_{field}"] = str(getattr(preset, field))
        st.session_state.calc_dtype = preset.torch_dtype
        st.session_state.calc_tied = preset.tie_word_embeddings


first = next(iter(PRESETS.values()))
for field in CALCULATOR_FIELDS:
    st.session_state.setdefault(f"calc_{field}", str(getattr(first, field)))
st.session_state.setdefault("calc_dtype", first.torch_dtype)
st.session_state.setdefault("calc_tied", first.tie_word_embeddings)

col_preset, col_r, col_targets, col_block = st.columns(4)
preset_name = col_preset.selectbox("Model", [*PRESETS, CUSTOM], key="calc_preset", on_change=load_preset,
                                   help="A preset fills in the shapes from its config.json; edit any of them below.")
calc_r = col_r.selectbox("r", [*RANKS, 128, 256], index=RANKS.index(8), key="calc_r")
target_names = {"q_proj+v_proj": ATTENTION_TARGETS, "every linear": ALL_LINEAR_TARGETS}
calc_targets = target_names[col_targets.selectbox("Target modules", list(target_names), key="calc_targets")]
calc_block = col_block.selectbox("NF4 block size", BLOCK_SIZES, index=BLOCK_SIZES.index(64), key="calc_block_size")
columns = [*st.columns(4), *st.columns(4, vertical_alignment="bottom")]
texts = {field: whole_number_box(column, label, getattr(first, field), f"calc_{field}")
         for column, (field, label) in zip(columns, CALCULATOR_FIELDS.items())}
dtype = columns[-2].selectbox("Checkpoint dtype", list(DTYPE_BYTES), key="calc_dtype")
tied = columns[-1].checkbox("Tied embeddings", key="calc_tied", help="The LM head shares the embedding matrix.")

try:
    values = {field: parse_whole_number(text, CALCULATOR_FIELDS[field], getattr(first, field))
              for field, text in texts.items()}
except ValueError as error:
    st.error(str(error), icon=":material/error:")
    st.stop()
preset = PRESETS.get(preset_name)
matches = preset is not None and all(getattr(preset, f) == v for f, v in values.items()) \
    and preset.torch_dtype == dtype and preset.tie_word_embeddings == tied
config = LLMConfig(name=preset_name if matches else CUSTOM, **values, tie_word_embeddings=tied, torch_dtype=dtype,
                   source=preset.source if matches else "custom values")
try:
    calculation = cached.calculator_table(config, int(calc_r), calc_targets, int(calc_block))
except ValueError as error:
    st.error(str(error), icon=":material/error:")
    st.stop()

rows = calculation.set_index("method")
lora, full = rows.loc["lora"], rows.loc["full"]
nf4 = calculation[(calculation.method == "qlora-nf4") & calculation.double_quant].iloc[0]
metrics = st.columns(4)
metrics[0].metric("LoRA adapter (float32)", format_bytes(lora.trainable_bytes),
                  help=f"{lora.trainable:,} trainable parameters, {lora.percent_of_full:.3f}% of the model")
metrics[1].metric(f"Full checkpoint ({dtype})", format_bytes(full.checkpoint_bytes),
                  help=f"{full.parameters:,} parameters")
metrics[2].metric("Full finetune, training memory", format_bytes(full.total_bytes))
metrics[3].metric("QLoRA (NF4) training memory", format_bytes(nf4.total_bytes),
                  help="NF4 base with double quantization: weights, gradients and AdamW state",
                  delta=f"{nf4.total_bytes / full.total_bytes - 1:.1%} vs full finetune", delta_color="inverse")
st.plotly_chart(memory_chart(calculation, f"Training memory of {config.name} (r={calc_r} on {'+'.join(calc_targets)})",
                             unit="GiB"), key="calc_memory_chart", config={"displayModeBar": False})
st.container(key="calc_table").dataframe(memory_table_view(calculation), hide_index=True,
             column_config={"label": st.column_config.TextColumn("method"),
                            "trainable": st.column_config.NumberColumn("trainable", format="localized"),
                            "percent_of_full": PERCENT})
st.caption(f"Shapes from {config.source}. The frozen base keeps the checkpoint's dtype except the block linears "
           f"under QLoRA; trainable weights, gradients and AdamW state are float32. Activations, the KV cache and "
           f"framework overhead come on top.")
