"""``det-al export``: write a selection for Label Studio (tasks + labeling config) or CVAT (XML, COCO)."""

from __future__ import annotations

import argparse
from pathlib import Path

from det_al.annotation import cvat


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tools = parser.add_subparsers(dest="tool", metavar="TOOL", required=True)

    ls = tools.add_parser("label-studio", help="tasks JSON and labeling config for Label Studio")
    _common(ls)
    urls = ls.add_mutually_exclusive_group(required=True)
    urls.add_argument("--local-files-root", metavar="ROOT",
                      help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: URLs /data/local-files/?d=PATH "
                           "(needs --image-root)")
    urls.add_argument("--url-prefix", metavar="URL", help="http(s) URL the images' file names are relative to")
    urls.add_argument("--cloud-prefix", metavar="URI",
                      help="s3://, gs:// or azure-blob:// URI the images' file names are relative to "
                           "(the project needs that cloud storage connected)")
    ls.add_argument("--model-version", default="det_al",
                    help="prediction model_version; the project must show this version (default: det_al)")
    ls.add_argument("--shapes", choices=("polygons", "boxes"), default="polygons",
                    help="masks as polygons traced from them (default), or boxes only")
    ls.add_argument("--polygon-tolerance", type=float, default=0.0,
                    help="simplify traced polygons by this many pixels (default 0: every contour corner)")

    cv = tools.add_parser("cvat", help="'CVAT for images 1.1' XML, 'COCO 1.0' zip and the image list")
    _common(cv)
    cv.add_argument("--frame-names", choices=cvat.FRAME_NAME_MODES, default="basename",
                    help="names CVAT stores: the file's base name (local upload, default) or its path "
                         "relative to the share/cloud root")
    cv.add_argument("--shapes", choices=cvat.SHAPES, default="mask",
                    help="masks as CVAT masks (default), polygons traced from them, or boxes")
    cv.add_argument("--polygon-tolerance", type=float, default=0.0, help="simplify traced polygons (pixels)")
    cv.add_argument("--task-name", default="det_al selection", help="task name written in the XML")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--selection", "-s", required=True, help="selection.json written by det-al select")
    parser.add_argument("--out", "-o", required=True, help="output folder")
    parser.add_argument("--image-root", "-r",
                        help="folder the file names are relative to (default: the one the scores remember, "
                             "in the selection's info); image sizes are checked against the files (after EXIF rotation)")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="with --image-root: read file_name entries that lie outside it (absolute paths, ../)")


def run(args: argparse.Namespace) -> int:
    from det_al.annotation.export import export_cvat, export_label_studio

    out = Path(args.out)
    if args.tool == "label-studio":
        done = export_label_studio(
            args.selection, out, local_files_root=args.local_files_root, url_prefix=args.url_prefix,
            cloud_prefix=args.cloud_prefix, image_root=args.image_root, model_version=args.model_version,
            shapes=args.shapes, polygon_tolerance=args.polygon_tolerance,
            allow_outside_root=args.allow_outside_root,
        )
        n_regions = sum(len(t["predictions"][0]["result"]) for t in done.tasks)
        print(f"wrote {len(done.tasks)} tasks ({n_regions} predicted regions) -> {done.files['tasks']}")
        print(f"labeling config -> {done.files['labeling_config']}")
        print(f"predictions have model_version {args.model_version!r}: select it in the project's settings "
              "to see them; import the tasks in this order (most informative first)")
        return 0
    done = export_cvat(
        args.selection, out, image_root=args.image_root, frame_names=args.frame_names, shapes=args.shapes,
        polygon_tolerance=args.polygon_tolerance, task_name=args.task_name,
        allow_outside_root=args.allow_outside_root,
    )
    n_shapes = len(done.coco.get("annotations", []))
    print(f"wrote {len(done.images)} frames, {n_shapes} shapes -> {done.files['annotations']} "
          f"(CVAT 1.1) and {done.files['coco_zip']} (COCO 1.0)")
    print(f"image list in rank order -> {done.files['images']}: create the task with sorting method 'predefined' "
          f"and the labels in {done.files['labels']}")
    return 0
