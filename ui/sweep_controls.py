"""The Sweep page's controls: one list of values per Train setting, the search and where to run, as a SweepSpec."""

import dataclasses

import streamlit as st

from tinylora.config import METHOD_LABELS, METHODS, QuantOptions, RunConfig, TrainConfig
from tinylora.lora import TARGETABLE
from tinylora.ray_executor import RAY_INSTALL, default_ray_address, ray_installed
from tinylora.sweep import OPTUNA_INSTALL, SweepSpec, parse_axis_values
from tinylora.tasks import TASKS

from .controls import parse_whole_number, whole_number_box

SEARCH_LABELS = {"grid": "Grid", "random": "Random", "tpe": "Optuna TPE"}
EXECUTOR_LABELS = {"local": "This machine", "ray": "Ray cluster"}
SCALING_LABELS = {False: "lora_alpha / r", True: "rsLoRA: lora_alpha / sqrt(r)"}
RANGE_HELP = " With random or TPE search, also a range low..high, with ' log' to sample log-uniformly."


def optuna_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("optuna") is not None


def sweep_controls(prefix: str = "sweep_") -> tuple[SweepSpec | None, str | None]:
    """Draw the controls and return (spec, None) when valid, else (None, error message)."""
    keep = "session"
    d, dt = RunConfig(), TrainConfig()
    search = st.segmented_control("Search", list(SEARCH_LABELS), format_func=SEARCH_LABELS.get, default="grid",
                                  required=True, key=f"{prefix}search", persist_state=keep,
                                  help="Grid tries every combination; random and TPE try a budget of points, "
                                       "TPE learning from the points that finished.")
    if search == "tpe" and not optuna_installed():
        st.warning(f"TPE search needs Optuna: `{OPTUNA_INSTALL}`", icon=":material/extension:")
    methods = st.multiselect("Method", list(METHODS), default=[d.method], format_func=METHOD_LABELS.get,
                             key=f"{prefix}method", persist_state=keep)
    tasks = st.multiselect("Task", list(TASKS), default=[d.task], key=f"{prefix}task", persist_state=keep)
    texts = {
        "r": st.text_input("r (rank)", "2, 8", key=f"{prefix}r", persist_state=keep,
                           help="Comma-separated ranks, e.g. 1, 4, 16, 64." + RANGE_HELP),
        "lora_alpha": st.text_input("lora_alpha", "8, 16", key=f"{prefix}lora_alpha", persist_state=keep,
                                    help="Comma-separated values." + RANGE_HELP),
        "lr": st.text_input("Learning rate", f"{dt.lr:g}", key=f"{prefix}lr", persist_state=keep,
                            help="Comma-separated AdamW learning rates, e.g. 1e-3, 5e-3." + RANGE_HELP),
        "target_modules": st.text_input("Target-module sets", "+".join(d.lora.target_modules),
                                        key=f"{prefix}targets", persist_state=keep,
                                        help=f"Comma-separated sets, modules joined by +, from {', '.join(TARGETABLE)}:"
                                             f" e.g. qkv+proj, qkv+proj+fc1+fc2."),
    }
    scaling = st.multiselect("Scaling rule", [False, True], default=[False], format_func=SCALING_LABELS.get,
                             key=f"{prefix}scaling", persist_state=keep,
                             help="Pick both to compare: rsLoRA (Kalajdzievski 2023) keeps large ranks learning.")
    seeds_text = st.text_input("Seeds", str(dt.seed), key=f"{prefix}seeds", persist_state=keep,
                               help="Comma-separated seeds; every point trains once per seed, so several seeds "
                                    "give a mean and a spread.")
    budget, sampler_seed = None, "0"
    if search != "grid":
        col_budget, col_seed = st.columns(2)
        budget = whole_number_box(col_budget, "Budget (points)", 8, f"{prefix}budget")
        sampler_seed = whole_number_box(col_seed, "Sampler seed", 0, f"{prefix}sampler_seed")
    with st.expander("Every run"):
        col_epochs, col_batch = st.columns(2)
        epochs = whole_number_box(col_epochs, "Epochs", dt.epochs, f"{prefix}epochs")
        batch_size = whole_number_box(col_batch, "Batch size", dt.batch_size, f"{prefix}batch_size")
        n_train = whole_number_box(st, "Training examples", dt.n_train, f"{prefix}n_train")
        quant_modules = st.selectbox("QLoRA quantizes", ["all", "targets"], key=f"{prefix}quant_modules",
                                     persist_state=keep, format_func={"all": "every frozen block linear",
                                                                      "targets": "only the LoRA targets"}.get)
    executor = st.radio("Run on", list(EXECUTOR_LABELS), format_func=EXECUTOR_LABELS.get, horizontal=True,
                        index=1 if default_ray_address() else 0, key=f"{prefix}executor", persist_state=keep)
    ray_address = ""
    if executor == "ray":
        if not ray_installed():
            st.warning(f"Ray is not installed. Install it with `{RAY_INSTALL}`, then start a cluster with "
                       f"`ray start --head` and enter its address.", icon=":material/extension:")
        ray_address = st.text_input("Ray cluster address", default_ray_address(), key=f"{prefix}ray_address",
                                    persist_state=keep, placeholder="127.0.0.1:6379",
                                    help="host:port of the cluster's head node; defaults to $TINYLORA_RAY_ADDRESS.")
    name = st.text_input("Name", "", key=f"{prefix}name", persist_state=keep, placeholder="optional")

    try:
        axes = {"method": tuple(methods), "task": tuple(tasks), "use_rslora": tuple(scaling)}
        for axis, text in texts.items():
            axes[axis] = parse_axis_values(axis, text)
        axes["seed"] = parse_axis_values("seed", seeds_text)
        train = dataclasses.replace(dt, epochs=parse_whole_number(epochs, "epochs", dt.epochs),
                                    batch_size=parse_whole_number(batch_size, "batch size", dt.batch_size),
                                    n_train=parse_whole_number(n_train, "training examples", dt.n_train))
        base = dataclasses.replace(d, train=train, quant=QuantOptions(modules=quant_modules))
        spec = SweepSpec(base=base, axes=axes, search=search,
                         budget=parse_whole_number(budget, "budget", 8) if budget is not None else None,
                         sampler_seed=parse_whole_number(sampler_seed, "sampler seed", 0), executor=executor,
                         ray_address=ray_address.strip(), name=name.strip())
        if executor == "ray" and not ray_installed():
            raise ValueError(f"the Ray executor needs Ray, which is not installed; install it with `{RAY_INSTALL}`")
        return spec.validate(), None
    except ValueError as error:
        return None, str(error)
