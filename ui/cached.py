"""Library calls of the Quantization and Parameters pages, cached with `st.cache_data`.

Arguments are plain values (strings, numbers, tuples) so that the cache keys are cheap to hash, and the data
directory is passed as a string because a finetuned base is read from it. The library keeps its own
per-process caches as well; these make a rerun with unchanged settings skip even the copies and the
DataFrame building.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from tinylora import calculator, memory, quant_lab
from tinylora.config import QuantOptions, RunConfig
from tinylora.lora import LoRAConfig
from tinylora.quant_lab import SchemeChoice


@st.cache_data(show_spinner=False, max_entries=16)
def layer_errors(base: str, home: str, block_size: int) -> pd.DataFrame:
    return quant_lab.layer_error_table(base, quant_lab.lab_schemes(block_size), Path(home))


@st.cache_data(show_spinner=False, max_entries=16)
def scheme_summary(base: str, home: str, block_size: int) -> pd.DataFrame:
    return quant_lab.scheme_summary(base, quant_lab.lab_schemes(block_size), Path(home))


@st.cache_data(show_spinner=False, max_entries=64)
def layer_error_values(base: str, home: str, choice: tuple[str, int, bool], layer: str) -> np.ndarray:
    """Return `W - dequantize(quantize(W))` of one layer under `choice` (scheme, block_size, double_quant)."""
    return quant_lab.quantization_errors(base, SchemeChoice(*choice), Path(home))[layer]


@st.cache_data(show_spinner=False, max_entries=32)
def layer_weights(base: str, home: str, layer: str) -> np.ndarray:
    return quant_lab.linear_weights(base, Path(home))[layer].reshape(-1).numpy()


@st.cache_data(show_spinner=False, max_entries=64)
def nf4_block(base: str, home: str, layer: str, block_index: int, block_size: int, double_quant: bool) -> dict:
    return quant_lab.nf4_block(base, layer, block_index, block_size, double_quant, Path(home))


@st.cache_data(show_spinner=False, max_entries=16)
def accuracy(base: str, home: str, block_size: int) -> pd.DataFrame:
    return quant_lab.accuracy_table(base, quant_lab.lab_schemes(block_size), home=Path(home))


@st.cache_data(show_spinner=False, max_entries=4)
def trainable_parameters() -> pd.DataFrame:
    return memory.trainable_parameters_table()


@st.cache_data(show_spinner=False, max_entries=32)
def training_memory(r: int, target_modules: tuple[str, ...], modules: str, block_size: int) -> pd.DataFrame:
    lora = LoRAConfig(r=r, target_modules=target_modules)
    return memory.training_memory_table(lora, quant=QuantOptions(modules=modules, block_size=block_size))


@st.cache_data(show_spinner=False, max_entries=64)
def parameter_breakdown(method: str, r: int, target_modules: tuple[str, ...], modules: str, block_size: int,
                        double_quant: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return the module table of `memory.parameter_breakdown` and its per-layer sums."""
    config = RunConfig(method=method, lora=LoRAConfig(r=r, target_modules=target_modules),
                       quant=QuantOptions(modules=modules, block_size=block_size, double_quant=double_quant))
    table = memory.parameter_breakdown(config)
    return table, memory.breakdown_by_layer(table)


@st.cache_data(show_spinner=False, max_entries=64)
def calculator_table(config: calculator.LLMConfig, r: int, target_modules: tuple[str, ...],
                     block_size: int) -> pd.DataFrame:
    return calculator.calculator_table(config, r, target_modules, block_size)
