"""Quantization lab: what int8 and NF4 storage do to the frozen base, and how much QLoRA training wins back."""

import streamlit as st

from tinylora.checkpoints import is_cached
from tinylora.config import BASES, TrainConfig, base_task
from tinylora.quant import BLOCK_SIZES
from tinylora.quant_lab import DEFAULT_TASK, lab_run_config, lab_schemes
from ui import cached
from ui.charts import accuracy_bars, error_histograms, nf4_levels_chart, sqnr_chart
from ui.common import get_store, page_header, session_owner
from ui.controls import parse_whole_number, whole_number_box
from ui.lab_jobs import absorb_progress, absorb_results, base_job_panel, ensure_base_job, latest_run, \
    submit_absorb_runs

STATISTICS = {
    "label": st.column_config.TextColumn("scheme"),
    "layer": st.column_config.TextColumn("layer"),
    "numel": st.column_config.NumberColumn("weights", format="localized"),
    "bits_per_weight": st.column_config.NumberColumn("bits per weight", format="%.3f"),
    "bytes": st.column_config.NumberColumn("bytes", format="localized", help="codes plus every scale"),
    "float32_bytes": st.column_config.NumberColumn("float32 bytes", format="localized"),
    "mse": st.column_config.NumberColumn("mean squared error", format="%.3e"),
    "max_abs_error": st.column_config.NumberColumn("max |error|", format="%.3e"),
    "sqnr_db": st.column_config.NumberColumn("SQNR (dB)", format="%.1f",
                                             help="10 log10(sum W² / sum (W − dequantize(quantize(W)))²)"),
}
ACCURACY_COLUMNS = {
    "label": st.column_config.TextColumn("base storage"),
    "val_acc": st.column_config.NumberColumn("validation accuracy", format="%.3f"),
    "val_loss": st.column_config.NumberColumn("validation loss", format="%.4f"),
    "agreement": st.column_config.NumberColumn("same prediction as float32", format="%.3f"),
    "linear_weight_bytes": st.column_config.NumberColumn("block linear bytes", format="localized"),
}
ABSORB_COLUMNS = {
    "label": st.column_config.TextColumn("scheme"),
    "float_acc": st.column_config.NumberColumn("float32 base", format="%.3f"),
    "quantized_acc": st.column_config.NumberColumn("quantized", format="%.3f"),
    "qlora_acc": st.column_config.NumberColumn("after QLoRA", format="%.3f"),
    "merged_acc": st.column_config.NumberColumn("merged", format="%.3f"),
    "requantized_acc": st.column_config.NumberColumn("merged, re-quantized", format="%.3f"),
    "merged_max_logit_change": st.column_config.NumberColumn("merge: max logit change", format="%.1e"),
    "requantized_max_logit_change": st.column_config.NumberColumn("re-quantize: max logit change", format="%.1e"),
    "requantize_max_weight_change": st.column_config.NumberColumn("re-quantize: max weight change", format="%.1e"),
    "run_id": st.column_config.TextColumn("run"),
}

store = get_store()
home = str(store.home)
page_header("Quantization lab", "QLoRA keeps the frozen base in 4 bits and trains float adapters on top. Here the "
                                "base is really stored in int8 or NF4: see the rounding error of every layer, what "
                                "it costs in accuracy, and how much a QLoRA adapter wins back.")

col_base, col_block, col_schemes = st.columns([1.4, 1, 3])
base = col_base.selectbox("Base", BASES, key="quant_base", persist_state="session",
                          help="The frozen weights to quantize: the seed-0 random initialisation, or a model fully "
                               "finetuned on one task (trained once in a worker, then cached).")
block_size = col_block.selectbox("NF4 block size", BLOCK_SIZES, index=BLOCK_SIZES.index(64), key="quant_block_size",
                                 persist_state="session", help="Weights that share one absmax scale.")
choices = lab_schemes(block_size)
picked = col_schemes.multiselect("Schemes", list(range(len(choices))), default=list(range(len(choices))),
                                 format_func=lambda i: choices[i].label, key="quant_schemes", persist_state="session")
selected = [choices[i] for i in sorted(picked)]
task = base_task(base) or DEFAULT_TASK

if not is_cached(base, store.home):
    run = ensure_base_job(store, base, session_owner())
    base_job_panel(store, run.id, session_owner(), key="quant_base_job")
    st.stop()
if not selected:
    st.info("Choose at least one scheme.", icon=":material/info:")
    st.stop()
labels = [choice.label for choice in selected]

# Error per layer

st.subheader("Rounding error per layer")
summary = cached.scheme_summary(base, home, block_size).set_index("label").loc[labels].reset_index()
st.container(key="quant_summary_table").dataframe(summary.drop(columns=["scheme", "layer"]), hide_index=True,
             column_config=STATISTICS)
st.caption(f"All 16 block linears of the {base} base together ({summary.numel[0]:,} weights). Embeddings, norms "
           f"and the head stay float32, as in QLoRA.")

table = cached.layer_errors(base, home, block_size)
table = table[table.label.isin(labels)]
layers = list(table.layer.unique())
layer = st.selectbox("Layer", layers, key="quant_layer", persist_state="session")
errors = {c.label: cached.layer_error_values(base, home, (c.scheme, c.block_size, c.double_quant), layer)
          for c in selected}
rows = table[table.layer == layer].set_index("label")
subtitles = {label: f"SQNR {rows.sqnr_db[label]:.1f} dB · max |error| {rows.max_abs_error[label]:.2e}"
             for label in labels}
st.plotly_chart(error_histograms(errors, subtitles, layer), key="quant_error_histograms",
                config={"displayModeBar": False})
st.plotly_chart(sqnr_chart(table), key="quant_sqnr_chart", config={"displayModeBar": False})
with st.expander("Per-layer table", expanded=False):
    st.container(key="quant_layer_table").dataframe(table.drop(columns=["scheme"]), hide_index=True,
                                                    column_config=STATISTICS)

# NF4 levels

st.subheader("NF4 levels over the weights")
n_blocks = -(-int(rows.numel.iloc[0]) // block_size)
if st.session_state.get("quant_block_index", 0) >= n_blocks:
    st.session_state.quant_block_index = 0
block_index = st.slider("Block", 0, n_blocks - 1, 0, key="quant_block_index",
                        help=f"{layer} has {n_blocks} blocks of {block_size} weights, each with its own absmax.")
block = cached.nf4_block(base, home, layer, block_index, block_size, False)
st.plotly_chart(nf4_levels_chart(cached.layer_weights(base, home, layer), block), key="quant_nf4_chart",
                config={"displayModeBar": False})
used = len(set(block["codes"].tolist()))
st.caption(f"Block {block_index} has absmax {block['absmax']:.4f}, so its 16 levels span ±{block['absmax']:.4f}; "
           f"its weights use {used} of them, and its largest rounding error is "
           f"{abs(block['error']).max():.2e}. NF4 spaces its levels for normally distributed weights: dense near "
           f"zero, sparse towards ±absmax.")

# Accuracy

st.subheader("Accuracy: quantized, then with a QLoRA adapter")
accuracy = cached.accuracy(base, home, block_size).set_index("label")
float_acc = float(accuracy.val_acc["float32"])
configs = {}
col_epochs, col_train, col_stop = st.columns([1, 1, 1], vertical_alignment="bottom")
epochs = whole_number_box(col_epochs, "QLoRA epochs", TrainConfig().epochs, "quant_epochs",
                          help="Epochs of QLoRA training over each quantized base (16 steps each).")
invalid = None
try:
    epoch_count = parse_whole_number(epochs, "QLoRA epochs", TrainConfig().epochs)
    for choice in selected:
        configs[choice.label] = lab_run_config(base, choice, task, TrainConfig(epochs=epoch_count)).validate()
except ValueError as error:
    invalid, configs = str(error), {}
runs = {label: run for label, config in configs.items()
        if (run := latest_run(store, "absorb", config.to_dict())) is not None}
active = any(run.active for run in runs.values())
col_train.button("Train QLoRA over each scheme", key="quant_absorb_button", type="primary",
                 disabled=active or invalid is not None,
                 width="stretch", on_click=submit_absorb_runs, args=(store, configs, session_owner()),
                 help="Starts one worker job per scheme: r=4, lora_alpha=8 on qkv and proj, learning rate 5e-3.")
if col_stop.button("Stop", key="quant_absorb_stop", disabled=not active, width="stretch"):
    for run in runs.values():
        store.request_stop(run.id)
    st.rerun()
notice = st.session_state.pop("_absorb_notice", None) or invalid
if notice:
    st.error(notice)

results = absorb_results(store, runs)
stages = {"quantized, before LoRA": {label: float(accuracy.val_acc[label]) for label in labels}}
if len(results):
    by_label = results.set_index("label")
    stages["after QLoRA training"] = {label: by_label.qlora_acc.get(label) for label in labels}
    stages["merged into the quantized base"] = {label: by_label.merged_acc.get(label) for label in labels}
    stages["merged, then re-quantized"] = {label: by_label.requantized_acc.get(label) for label in labels}
st.plotly_chart(accuracy_bars(stages, float_acc, title=f"Validation accuracy on {task} ({base} base)"),
                key="quant_accuracy_chart", config={"displayModeBar": False})
before = accuracy.loc[["float32", *labels], ["val_acc", "val_loss", "agreement", "linear_weight_bytes"]]
st.container(key="quant_accuracy_table").dataframe(before.reset_index(), hide_index=True,
                                                 column_config=ACCURACY_COLUMNS)
if runs:
    absorb_progress(store, runs, key="quant_absorb")
if len(results):
    st.container(key="quant_absorb_table").dataframe(results.drop(columns=["status", "unmerged_acc"]),
                                                     hide_index=True, column_config=ABSORB_COLUMNS)
    st.caption("Merging adds scaling · B @ A to the dequantized base as a float delta, so the merged model computes "
               "what the adapter was trained against. Re-quantizing rounds that sum into new codes, and the "
               "adapter's small correction can be lost in the rounding.")
elif not runs:
    st.caption(f"Press the button to train a QLoRA adapter over each selected base; the validation set is the "
               f"same 512 examples of {task}.")
