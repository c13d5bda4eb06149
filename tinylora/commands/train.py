"""`python -m tinylora train`: one training run with the same library code the app's workers use."""

import argparse
import json
import sys

from ..checkpoints import base_path, is_cached
from ..config import BASES, METHODS, QuantOptions, RunConfig, TrainConfig
from ..fastpath import FAST_MODES
from ..lora import TARGETABLE, LoRAConfig
from ..quant import BLOCK_SIZES
from ..tasks import TASKS
from ..training import prepare_run


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per Train page control, with the reference run's defaults."""
    d, dl, dt, dq = RunConfig(), LoRAConfig(), TrainConfig(), QuantOptions()
    parser.add_argument("--method", choices=list(METHODS), default=d.method)
    parser.add_argument("--task", choices=list(TASKS), default=d.task)
    parser.add_argument("--base", choices=BASES, default=d.base,
                        help="the frozen base: the seed's initialisation, or a base fully finetuned on a task, "
                             "trained once and cached under $TINYLORA_HOME (default %(default)s)")
    parser.add_argument("--r", type=int, default=dl.r, help="LoRA rank (default %(default)s)")
    parser.add_argument("--lora-alpha", type=float, default=dl.lora_alpha,
                        help="LoRA alpha; the update is scaled by lora_alpha / r (default %(default)s)")
    parser.add_argument("--use-rslora", action="store_true",
                        help="scale the update by lora_alpha / sqrt(r) (rsLoRA) instead of lora_alpha / r")
    parser.add_argument("--targets", default=",".join(dl.target_modules),
                        help=f"comma-separated modules to adapt, from {','.join(TARGETABLE)} (default %(default)s)")
    parser.add_argument("--lr", type=float, default=dt.lr, help="AdamW learning rate (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=dt.epochs)
    parser.add_argument("--batch-size", type=int, default=dt.batch_size)
    parser.add_argument("--seed", type=int, default=dt.seed,
                        help="seeds model and adapter initialisation and the batch order (default %(default)s)")
    parser.add_argument("--fast", choices=list(FAST_MODES), default=dt.fast,
                        help="auto: the fused fast path for LoRA and QLoRA, eager modules for a full finetune; "
                             "fused: the fast path for every method; bf16: the fast path with bfloat16 "
                             "matmuls in the linear layers (changes results); off: eager modules, bit for bit "
                             "the reference recipe (default %(default)s)")
    parser.add_argument("--cache-dequantized", action=argparse.BooleanOptionalAction, default=dt.cache_dequantized,
                        help="QLoRA on the fast path: dequantize the frozen base once and keep a float32 copy "
                             "while training, or dequantize it every step (default: keep the copy)")
    parser.add_argument("--quant-modules", choices=["all", "targets"], default=dq.modules,
                        help="QLoRA: quantize every frozen block linear, or only the LoRA targets as the "
                             "reference notebook does (default %(default)s)")
    parser.add_argument("--block-size", type=int, choices=BLOCK_SIZES, default=dq.block_size,
                        help="QLoRA NF4: weights per absmax scale (default %(default)s)")
    parser.add_argument("--double-quant", action=argparse.BooleanOptionalAction, default=dq.double_quant,
                        help="QLoRA NF4: quantize the per-block absmax values to 8 bits (default: on)")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    return RunConfig(
        method=args.method,
        task=args.task,
        base=args.base,
        lora=LoRAConfig(r=args.r, lora_alpha=args.lora_alpha, target_modules=targets, use_rslora=args.use_rslora),
        train=TrainConfig(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                          fast=args.fast, cache_dequantized=args.cache_dequantized),
        quant=QuantOptions(modules=args.quant_modules, block_size=args.block_size, double_quant=args.double_quant),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the log")


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args).validate()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not is_cached(config.base, model=config.model):
        print(f"training the base {config.base} once; it is cached at {base_path(config.base, model=config.model)}",
              file=sys.stderr)
    prepared = prepare_run(config)
    history, summary, last_loss = [], {}, None
    for event in prepared.events():
        if event["type"] == "start":
            summary.update(trainable=event["trainable"], total=event["total"])
            if not args.json:
                share = 100 * event["trainable"] / event["total"]
                print(f"trainable: {event['trainable']:,} / {event['total']:,} ({share:.2f}%)")
        elif event["type"] == "eval":
            history.append({"epoch": event["epoch"], "step": event["step"], "val/acc": event["val/acc"],
                            "val/loss": event["val/loss"], "train/loss": last_loss})
            if not args.json:
                print(f"epoch {event['epoch']:g} loss={last_loss:.3f} val_acc={event['val/acc']:.3f}")
        elif event["type"] == "step":
            last_loss = event["train/loss"]
        elif event["type"] == "end":
            summary.update(status=event["status"], message=event["message"], final_acc=event["final_acc"],
                           seconds=event["seconds"], steps_per_second=event["steps_per_second"])
    if args.json:
        print(json.dumps({"config": config.to_dict(), **summary, "history": history}, indent=2))
    else:
        print(f"{summary['status']} in {summary['seconds']:.1f}s ({summary['steps_per_second']:.1f} steps/s), "
              f"final val_acc={summary['final_acc']:.3f}" if summary["final_acc"] is not None
              else f"{summary['status']}: {summary['message']}")
    return 0 if summary["status"] == "finished" else 1
