"""The ``det-al`` command: one subcommand per module in :mod:`det_al.cli`.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``. Bad input
(:class:`det_al.errors.InputError`) is printed as one line ``det-al: error: ...`` with exit
status 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from det_al.errors import InputError, print_error
from det_al.models.device import check_device

# subcommand -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("det_al.cli.score", "rank a pool of images by informativeness"),
    "demo": ("det_al.cli.demo", "generate synthetic data, train a small detector, score its pool"),
    "train": ("det_al.cli.train", "train a detector on a COCO file"),
    "evaluate": ("det_al.cli.evaluate", "COCO evaluation of a checkpoint"),
    "select": ("det_al.cli.select", "pick a batch of images from a ranking"),
    "export": ("det_al.cli.export", "write a selection for Label Studio or CVAT"),
    "import": ("det_al.cli.import_labels", "read finished annotations back into COCO"),
    "merge": ("det_al.cli.merge", "add labelled images to the training set, remove them from the pool"),
    "loop": ("det_al.cli.loop", "simulate train -> select -> label rounds"),
    "report": ("det_al.cli.report", "write a static HTML report of a scored pool"),
    "merge-shards": ("det_al.cli.merge_shards", "join the outputs of sharded scoring jobs"),
    "serve": ("det_al.cli.serve", "serve a checkpoint as a Label Studio ML backend"),
    "retrain": ("det_al.cli.retrain", "fine-tune on det-al serve's journalled annotations and rescore"),
}


def _available() -> dict[str, tuple[str, str]]:
    found = {}
    for name, (module, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            found[name] = (module, help_text)
    return found


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(prog="det-al", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, (module_name, help_text) in _available().items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        modules[name] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if getattr(args, "device", None) is not None:  # a device this machine lacks: before anything is written
            check_device(args.device)
        return int(modules[args.command].run(args) or 0)
    except InputError as e:
        print_error(f"det-al {args.command}", e)
        return 2
    except KeyboardInterrupt:
        print(f"det-al {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
