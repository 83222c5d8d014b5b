"""``det-al import``: read finished Label Studio or CVAT annotations back into a COCO labels file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from det_al.annotation import cvat
from det_al.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tools = parser.add_subparsers(dest="tool", metavar="TOOL", required=True)
    ls = tools.add_parser("label-studio", help="Label Studio's JSON export (not its COCO export)")
    ls.add_argument("export", help="the JSON export file")
    cv = tools.add_parser("cvat", help="CVAT's 'CVAT for images 1.1' or 'COCO 1.0' export")
    cv.add_argument("export", help="the export zip CVAT downloads, or the annotations.xml / COCO JSON in it")
    cv.add_argument("--frame-names", choices=cvat.FRAME_NAME_MODES, default="basename",
                    help="how the export named the frames (as given to det-al export cvat)")
    done = cv.add_mutually_exclusive_group()
    done.add_argument("--finished", metavar="FILE",
                      help="text file naming the frames a person finished, one a line: their unchanged "
                           "pre-annotations are imported too (default: frames whose shapes are exactly the "
                           "model's pre-annotations are skipped as nobody's work)")
    done.add_argument("--all-finished", action="store_true",
                      help="every frame of the export was reviewed by a person (e.g. the job is completed): "
                           "import unchanged pre-annotations as labels too")
    for p in (ls, cv):
        p.add_argument("--selection", "-s", required=True,
                       help="the selection.json the export was made from (images and categories)")
        p.add_argument("--out", "-o", required=True, help="output folder: labels.json and import_report.json")
        p.add_argument("--keep-empty", action="store_true",
                       help="keep images labelled with no object (default: skip them as unfinished)")


def _frame_list(path: str | None) -> list[str] | None:
    """Frame names from a text file, one a line (blank lines and ``#`` comments ignored)."""
    if path is None:
        return None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the list of finished frames: {e}", path) from e
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def run(args: argparse.Namespace) -> int:
    import det_al

    if args.tool == "label-studio":
        done = det_al.import_label_studio(args.export, args.selection, args.out, keep_empty=args.keep_empty)
    else:
        finished = "all" if args.all_finished else _frame_list(args.finished)
        done = det_al.import_cvat(args.export, args.selection, args.out, frame_names=args.frame_names,
                                  keep_empty=args.keep_empty, finished=finished)
    report = done.report
    print(report.summary())
    for note in report.notes:
        print("  note: " + note)
    for s in report.skipped[:20]:
        print("  skipped " + json.dumps(s))
    if len(report.skipped) > 20:
        print(f"  ... {len(report.skipped) - 20} more in {done.files['report']}")
    print(f"-> {done.files['labels']}")
    return 0
