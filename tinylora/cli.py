"""The `python -m tinylora` command line: one subcommand per module in `tinylora.commands`."""

import argparse
import importlib
import sys

# Subcommand name -> module in tinylora.commands with `add_arguments(parser)` and `run(args) -> int`.
COMMANDS = {
    "train": "Train one run and print its per-epoch log (or --json).",
    "quant": "Quantize a base with each scheme and print error statistics, bytes and accuracy (or --json).",
    "lab": "Run the reference notebook's experiments and print their tables (or --json).",
    "sweep": "Run a hyperparameter sweep through the job runner (or a Ray cluster) and print its results.",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinylora", description="tinylora: LoRA and QLoRA on a tiny "
                                     "transformer, on the CPU.")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, help_text in COMMANDS.items():
        modules[name] = importlib.import_module(f"tinylora.commands.{name}")
        modules[name].add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    return modules[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
