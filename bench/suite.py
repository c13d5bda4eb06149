"""The benchmark sections: each takes the command-line options and returns a JSON-ready dict of figures.

Timings on a shared machine are noisy. So every comparison runs its contenders interleaved in one process,
alternating their order, and reports the median and the spread (min and max) over repetitions. Speed-ups are
the medians of per-repetition ratios.
"""

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from tinylora.config import METHODS, RunConfig
from tinylora.fastpath import FAST_MODES, keep_freed_memory, make_forward  # noqa: F401  (bench.__main__ calls it)
from tinylora.flops import training_step_flops
from tinylora.methods import build_model
from tinylora.quant import QuantizedLinear
from tinylora.split_step import set_step_processes, step_processes

from tinylora.training import prepare_run

from .runs import SteppedRun, run_config, run_tinylora

REFERENCE = "reference"
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def machine() -> dict:
    """Describe the machine the figures come from: CPU model and flags, core count, library versions, load."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line.split(":", 1)[1] for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cpu_flags": [f for f in wanted if f in flags.split()],
            "load_average": os.getloadavg(),
            "environment": {k: os.environ[k] for k in _THREAD_VARIABLES if k in os.environ}}


# Environment variables that change how the BLAS and OpenMP threads run, recorded with the figures.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "KMP_BLOCKTIME")


@contextlib.contextmanager
def thread_count(n: int):
    """Run the body with `n` intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def contenders(fast_modes: tuple[str, ...]) -> list[str]:
    """List the implementations the throughput section times: the reference, then tinylora per fast mode."""
    return [REFERENCE, *(f"tinylora fast={mode}" for mode in fast_modes)]


# Training throughput

def run_interleaved(runs: list[SteppedRun]) -> None:
    """Advance `runs` one event each in turn until all have ended, so that they share the same load."""
    while not all(run.done for run in runs):
        for run in runs:
            if not run.done:
                run.advance()


def print_rep(section: str, rep: int, reps: int, method: str, by_contender: dict[str, list[SteppedRun]]) -> None:
    """Print each contender's median step time in the repetition that just ended."""
    print(f"  {section} rep {rep + 1}/{reps} {method}: " + ", ".join(
        f"{name} {statistics.median(done[-1].step_seconds) * 1e3:.1f} ms/step" for name, done in by_contender.items()),
        flush=True)

def throughput(methods: list[str], reps: int, epochs: int, fast_modes: tuple[str, ...]) -> dict:
    """Train every method with every contender `reps` times, the contenders interleaved step by step.

    Round-robin interleaving exposes every contender to the same load from other processes. A contender's
    step time is the median over its steps, which shrugs off the steps that another process delayed.
    """
    names = contenders(fast_modes)
    runs: dict[str, dict[str, list[SteppedRun]]] = {m: {c: [] for c in names} for m in methods}
    for rep in range(reps):
        for method in methods:
            order = names if rep % 2 == 0 else names[::-1]
            active = [SteppedRun(contender, method, epochs) for contender in order]
            run_interleaved(active)
            for contender, run in zip(order, active):
                runs[method][contender].append(run)
            print_rep("throughput", rep, reps, method, runs[method])

    out = {}
    for method, by_contender in runs.items():
        ref = by_contender[REFERENCE]
        entry = {}
        for contender, done in by_contender.items():
            step = [statistics.median(r.step_seconds) for r in done]
            ref_step = [statistics.median(r.step_seconds) for r in ref]
            run_seconds = [sum(r.step_seconds) + sum(r.eval_seconds) for r in done]
            ref_run = [sum(r.step_seconds) + sum(r.eval_seconds) for r in ref]
            entry[contender] = {
                "steps": len(done[0].step_seconds),
                "step_ms": spread([s * 1e3 for s in step]),
                "steps_per_second": spread([1 / s for s in step]),
                "run_seconds": spread(run_seconds),
                "eval_seconds": spread([sum(r.eval_seconds) for r in done]),
                "speedup_steps": spread([b / s for s, b in zip(step, ref_step)]),
                "speedup_run": spread([b / s for s, b in zip(run_seconds, ref_run)]),
                "accuracies": done[0].accuracies,
                "final_loss": done[0].final_loss,
            }
        out[method] = entry
    return out


# Matrix-multiply peak and the fraction of it a step reaches

def _interleaved_medians(calls: dict, reps: int) -> dict[str, float]:
    for call in calls.values():
        call()
    seconds = {name: [] for name in calls}
    for _ in range(reps):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in seconds.items()}


def matmul_peak(reps: int = 10) -> dict:
    """Measure float32 matmul GFLOP/s through the default BLAS path (torch.mm) and through oneDNN.

    The peak is the best median: square 2048 products, and the step's largest product (1,600 x 64 by 64 x 256).
    """
    out = {}
    for label, (m, k, n), count in [("2048x2048x2048", (2048, 2048, 2048), reps),
                                    ("1600x64x256", (1600, 64, 256), 50 * reps)]:
        a, b = torch.randn(m, k), torch.randn(n, k)
        calls = {"torch.mm": lambda: torch.mm(a, b.t())}
        if torch.backends.mkldnn.is_available():
            a_dnn, b_dnn = a.to_mkldnn(), b.to_mkldnn()
            calls["onednn"] = lambda: torch._C._nn.mkldnn_linear(a_dnn, b_dnn)
        medians = _interleaved_medians(calls, count)
        out[label] = {name: 2 * m * k * n / s / 1e9 for name, s in medians.items()}
    out["peak_gflops"] = max(v for entry in out.values() for v in entry.values())

    # For comparison only (not a float32 peak): bfloat16 on the same square product.
    a, b = torch.randn(2048, 2048, dtype=torch.bfloat16), torch.randn(2048, 2048, dtype=torch.bfloat16)
    out["bfloat16_2048_gflops"] = 2 * 2048 ** 3 / _interleaved_medians({"bf16": lambda: a @ b}, reps)["bf16"] / 1e9
    return out


def fraction_of_peak(throughput_figures: dict, peak_gflops: float) -> dict:
    """GFLOP per step from the model's shapes, divided by each contender's median step time and the peak."""
    out = {}
    for method, by_contender in throughput_figures.items():
        flops = training_step_flops(RunConfig(method=method))
        out[method] = {"gflop_per_step": flops.total / 1e9, "forward_gflop": flops.forward / 1e9,
                       "backward_gflop": flops.backward / 1e9, "floor_ms": flops.total / 1e9 / peak_gflops * 1e3}
        for contender, entry in by_contender.items():
            gflops = flops.total / 1e9 / (entry["step_ms"]["median"] / 1e3)
            out[method][contender] = {"gflops": gflops, "fraction": gflops / peak_gflops}
    return out


# Where a step's time goes

_CATEGORIES = [
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn::_linear_pointwise",
                "aten::addmm_")),
    ("attention (fused kernel)", ("aten::_scaled_dot_product_flash_attention_for_cpu",
                                  "aten::_scaled_dot_product_flash_attention_for_cpu_backward")),
    ("softmax", ("aten::_softmax", "aten::_softmax_backward_data")),
    ("gelu", ("aten::gelu", "aten::gelu_backward")),
    ("layer norm", ("aten::native_layer_norm", "aten::native_layer_norm_backward")),
]


def profile_step(method: str, contender: str, steps: int = 20) -> dict:
    """Share of self CPU time per kind of operator over `steps` training steps of the default configuration."""
    from torch.profiler import ProfilerActivity, profile

    from . import reference

    prepared = prepare_run(run_config(method))
    (x, y) = prepared.train_data
    if contender == REFERENCE:
        config = prepared.config
        model = reference.build(method, 0, METHODS[method], config.lora.r, config.lora.lora_alpha,
                                config.lora.target_modules)
        forward = model
    else:
        model = prepared.model
        forward = make_forward(model, contender.split("=", 1)[1])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3, foreach=True)

    def step(i):
        idx = torch.arange(i * 64, (i + 1) * 64) % len(x)
        loss = F.cross_entropy(forward(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()

    for i in range(5):
        step(i)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(i)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    shares = {name: 0.0 for name, _ in _CATEGORIES}
    for e in events:
        for name, ops in _CATEGORIES:
            if e.key in ops:
                shares[name] += e.self_cpu_time_total / total
    shares["everything else"] = 1.0 - sum(shares.values())
    return {"ms_per_step": total / 1e3 / steps, "shares": shares,
            "operator_calls_per_step": sum(e.count for e in events) / steps}


# Memory

def frozen_base_bytes(method: str) -> dict:
    """Bytes stored for the frozen part of the model: all of it, and the block linears' weights alone."""
    model = build_model(RunConfig(method=method))
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    frozen += sum(b.numel() * b.element_size() for b in model.buffers())
    linears = 0
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            linears += module.nbytes
        elif isinstance(module, torch.nn.Linear) and not module.weight.requires_grad:
            linears += module.weight.numel() * module.weight.element_size()
    return {"frozen_bytes": frozen, "frozen_linear_weight_bytes": linears}


def peak_rss(method: str, contender: str, epochs: int, threads: int) -> dict:
    """Memory of a fresh process that runs one training of `method` (see bench.child for the fields)."""
    command = [sys.executable, "-m", "bench.child", method, contender, str(epochs), str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=_ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory(methods: list[str], epochs: int, fast_modes: tuple[str, ...], threads: int) -> dict:
    out = {"idle": peak_rss(methods[0], "idle", epochs, threads)}
    for method in methods:
        out[method] = frozen_base_bytes(method)
        out[method]["dequantized_copy_bytes"] = dequantized_copy_bytes(method)
        out[method]["processes"] = {c: peak_rss(method, c, epochs, threads) for c in contenders(fast_modes)}
    return out


def dequantized_copy_bytes(method: str) -> int:
    """Bytes of the float32 copy of a quantized base that the fast path keeps while training (0 without one)."""
    prepared = prepare_run(run_config(method, fast="fused", epochs=1))
    forward = make_forward(prepared.model, "fused")
    forward(prepared.train_data[0][:2])
    cache = getattr(forward, "dequantized", None)
    return 0 if cache is None else cache.nbytes


# Accuracy of the options that change results

def accuracy(methods: list[str], seeds: list[int], modes: tuple[str, ...], threads: list[int]) -> dict:
    """Per-epoch accuracies of the default configuration over `seeds`, method by method.

    Every fast mode runs at `threads[0]`. As a control, "off" (the reference's arithmetic) also runs at each
    further thread count, under the key "off, N threads": it shows how far the eager path itself moves when
    only the thread count, and so the order of some float sums, changes. With one thread, "fused" also runs
    with its steps split over two processes, under the key "fused, 2 processes", as a worker runs it.
    """
    out = {}
    for method in methods:
        out[method] = {}
        variants = [(mode, threads[0], 1) for mode in modes]
        variants += [("off", n, 1) for n in threads[1:] if "off" in modes]
        if "fused" in modes and threads[0] == 1:
            variants.append(("fused", 1, 2))
        for mode, n, processes in variants:
            before = step_processes()
            set_step_processes(processes)
            try:
                with thread_count(n):
                    runs = [run_tinylora(run_config(method, fast=mode, seed=seed)) for seed in seeds]
            finally:
                set_step_processes(before)
            key = (f"{mode}, 2 processes" if processes == 2 else mode if n == threads[0]
                   else f"{mode}, {n} threads")
            out[method][key] = {"seeds": seeds, "threads": n, "accuracies": [r.accuracies for r in runs],
                                "final_losses": [r.final_loss for r in runs]}
        print(f"  accuracy {method}: done", flush=True)
    return out


# The lab against the reference script

def lab(reps: int, threads: int) -> dict:
    """Time `python -m tinylora lab` (its default worker processes) against `bench.lab_reference`, in turn.

    Each is a fresh process, timed from start to exit, so start-up and imports count. The order alternates
    between repetitions. Both print their accuracies, which are recorded for a side-by-side check.
    """
    commands = {
        "tinylora lab": [sys.executable, "-m", "tinylora", "lab", "--json", "--threads", str(threads)],
        REFERENCE: [sys.executable, "-m", "bench.lab_reference", str(threads)],
    }
    seconds = {name: [] for name in commands}
    outputs = {}
    for rep in range(reps):
        order = list(commands) if rep % 2 == 0 else list(commands)[::-1]
        for name in order:
            start = time.perf_counter()
            result = subprocess.run(commands[name], capture_output=True, text=True, check=True, cwd=_ROOT)
            seconds[name].append(time.perf_counter() - start)
            outputs[name] = json.loads(result.stdout)
        print(f"  lab rep {rep + 1}/{reps}: " + ", ".join(f"{n} {s[-1]:.1f} s" for n, s in seconds.items()),
              flush=True)
    lab_out, ref_out = outputs["tinylora lab"], outputs[REFERENCE]
    accuracies = {
        "tinylora lab": {row["method"]: row["val_acc"] for row in lab_out["methods"]},
        REFERENCE: {method: ref_out[method] for method in ("full", "lora", "qlora-int8")},
    }
    accuracies["tinylora lab"]["joint"] = list(lab_out["joint"]["acc"].values())
    accuracies[REFERENCE]["joint"] = ref_out["joint"][-1]
    return {"command": " ".join(commands["tinylora lab"][1:]), "workers": lab_out["workers"],
            "seconds": {name: spread(s) for name, s in seconds.items()},
            "fraction": spread([a / b for a, b in zip(seconds["tinylora lab"], seconds[REFERENCE])]),
            "accuracies": accuracies}


def all_methods() -> list[str]:
    return list(METHODS)


DEFAULT_FAST_MODES = tuple(m for m in FAST_MODES if m != "auto")
