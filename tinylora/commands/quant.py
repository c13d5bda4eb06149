"""`python -m tinylora quant`: what each quantization scheme does to a base's weights and accuracy."""

import argparse
import json
import math
import sys

from ..checkpoints import base_path, is_cached
from ..config import BASES, RANDOM_BASE, base_task
from ..quant import BLOCK_SIZES
from ..quant_lab import (absorb_quantization_error, accuracy_table, lab_run_config, lab_schemes, layer_error_table,
                         scheme_summary)
from ..tasks import TASKS

STATISTICS = ["bits_per_weight", "bytes", "mse", "max_abs_error", "sqnr_db"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", choices=BASES, default=RANDOM_BASE,
                        help="the frozen base to quantize; a finetuned base is trained once and cached under "
                             "$TINYLORA_HOME (default %(default)s)")
    parser.add_argument("--task", choices=list(TASKS), default=None,
                        help="task to measure accuracy on (default: the base's own task, odd_majority for random)")
    parser.add_argument("--block-size", type=int, choices=BLOCK_SIZES, default=64,
                        help="NF4 weights per absmax scale (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed of the random base (default 0)")
    parser.add_argument("--qlora", action="store_true",
                        help="also train a QLoRA adapter over each quantized base (about as long as one "
                             "`train` run per scheme) and report its accuracy, merged and requantized")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def run(args: argparse.Namespace) -> int:
    task = args.task or base_task(args.base) or "odd_majority"
    if not is_cached(args.base):
        print(f"training the base {args.base} once; it is cached at {base_path(args.base)}", file=sys.stderr)
    choices = lab_schemes(args.block_size)
    summary = scheme_summary(args.base, choices, seed=args.seed)
    layers = layer_error_table(args.base, choices, seed=args.seed)
    accuracy = accuracy_table(args.base, choices, task, seed=args.seed)

    reports = []
    for i, choice in enumerate(choices):
        report = {"scheme": choice.scheme, "label": choice.label, "block_size": choice.block_size,
                  "double_quant": choice.double_quant}
        report.update({key: summary.iloc[i][key] for key in ["numel", "float32_bytes", *STATISTICS]})
        report.update({key: accuracy.iloc[i + 1][key] for key in ["val_acc", "val_loss", "agreement"]})
        report["layers"] = layers[layers.label == choice.label][["layer", "numel", *STATISTICS]].to_dict("records")
        if args.qlora:
            report["qlora"] = _train_qlora(args.base, choice, task)
        reports.append(report)
    result = {"base": args.base, "task": task, "float": {key: accuracy.iloc[0][key] for key in ["val_acc", "val_loss"]},
              "schemes": reports}

    if args.json:
        print(json.dumps(_plain(result), indent=2))
        return 0
    _print_tables(result, summary, layers, accuracy)
    return 0


def _train_qlora(base: str, choice, task: str) -> dict:
    result = None
    for event in absorb_quantization_error(lab_run_config(base, choice, task)):
        if event["type"] == "result":
            result = {key: value for key, value in event.items() if key != "type"}
    return result


def _print_tables(result: dict, summary, layers, accuracy) -> None:
    print(f"base {result['base']}, accuracy on {result['task']} (512 validation examples)\n")
    table = summary[["label", *STATISTICS]].merge(accuracy[["label", "val_acc", "val_loss", "agreement"]],
                                                  on="label", how="outer")
    table = table.set_index("label").loc[accuracy.label]  # float32 first, then the schemes in order
    print(table.to_string(na_rep="-", formatters=_FORMATS))
    if any("qlora" in report for report in result["schemes"]):
        print("\nafter QLoRA training over each quantized base")
        for report in result["schemes"]:
            q = report["qlora"]
            requantized = "-" if q["requantized_acc"] is None else f"{q['requantized_acc']:.3f}"
            print(f"  {report['label']:34s} quantized {q['quantized_acc']:.3f} -> QLoRA {q['qlora_acc']:.3f}, "
                  f"merged {q['merged_acc']:.3f}, requantized {requantized}")
    print("\nper layer")
    sqnr = layers.pivot(index="layer", columns="label", values="sqnr_db")
    print(sqnr.loc[layers.layer.unique(), layers.label.unique()].to_string(float_format=lambda v: f"{v:.1f}"))
    print("(SQNR in dB: 10 log10 of weight energy over quantization error energy; higher is better)")


def _format(pattern: str):
    return lambda value: "-" if value is None or value != value else pattern.format(value)


_FORMATS = {"bits_per_weight": _format("{:.3f}"), "bytes": _format("{:,.0f}"), "mse": _format("{:.3g}"),
            "max_abs_error": _format("{:.3g}"), "sqnr_db": _format("{:.1f}"), "val_acc": _format("{:.3f}"),
            "val_loss": _format("{:.4f}"), "agreement": _format("{:.3f}")}


def _plain(value):
    """Convert numpy scalars to Python numbers and non-finite floats to None, so json.dumps accepts them."""
    if isinstance(value, dict):
        return {key: _plain(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
