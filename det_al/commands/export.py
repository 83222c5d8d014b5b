"""``det-al export``: write a selection for Label Studio (tasks + labeling config) or CVAT (XML, COCO)."""

from __future__ import annotations

import argparse
import json
import os
import zipfile
from pathlib import Path

from det_al import cvat, label_studio
from det_al.coco import load_coco
from det_al.errors import InputError
from det_al.files import atomic_open, write_json, write_text


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
                        help="folder the file names are relative to; when given, image sizes are checked "
                             "against the files (after EXIF rotation)")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="with --image-root: read file_name entries that lie outside it (absolute paths, ../)")


def _check_sizes(selection: dict, image_root: str | None, source: str, allow_outside_root: bool) -> None:
    if not image_root:
        return
    from det_al.images import ImageReadError, check_file_names, check_image_root, image_size

    check_image_root(image_root)
    check_file_names(selection["images"], image_root, source, allow_outside_root)
    for image in selection["images"]:
        path = Path(image_root) / image["file_name"]
        try:
            size = image_size(path)
        except ImageReadError as e:
            raise InputError(e.reason, e.path) from e
        if size != (int(image["width"]), int(image["height"])):
            raise InputError(
                f"image is {size[0]}x{size[1]} (after EXIF rotation) but the selection says "
                f"{image['width']}x{image['height']}", path)


def run(args: argparse.Namespace) -> int:
    selection = load_coco(args.selection)
    for image in selection["images"]:
        if "width" not in image or "height" not in image:
            raise InputError(f"image {image['id']} has no width/height", args.selection)
    _check_sizes(selection, args.image_root, args.selection, args.allow_outside_root)
    out = Path(args.out)
    if args.tool == "label-studio":
        return _label_studio(args, selection, out)
    return _cvat(args, selection, out)


def _label_studio(args, selection: dict, out: Path) -> int:
    if args.local_files_root:
        if not args.image_root:
            raise InputError("--local-files-root needs --image-root (where the images are)")
        root, document_root = args.image_root, args.local_files_root

        def image_url(image: dict) -> str:
            return label_studio.local_files_url(os.path.join(root, image["file_name"]), document_root)
    else:
        prefix = args.url_prefix or args.cloud_prefix
        if args.cloud_prefix and not args.cloud_prefix.startswith(label_studio.CLOUD_SCHEMES):
            raise InputError(f"--cloud-prefix must start with one of {', '.join(label_studio.CLOUD_SCHEMES)}")

        def image_url(image: dict) -> str:
            return label_studio.prefixed_url(image["file_name"], prefix)
    polygons = args.shapes == "polygons" and label_studio.has_masks(selection)
    try:
        tasks = label_studio.selection_to_tasks(
            selection, image_url, args.model_version, polygons=polygons, tolerance=args.polygon_tolerance)
    except ValueError as e:
        raise InputError(str(e), args.selection) from e
    config = label_studio.labeling_config(selection["categories"], polygons=polygons)
    write_json(out / "tasks.json", tasks, indent=1)
    write_text(out / "labeling_config.xml", config)
    n_regions = sum(len(t["predictions"][0]["result"]) for t in tasks)
    print(f"wrote {len(tasks)} tasks ({n_regions} predicted regions) -> {out / 'tasks.json'}")
    print(f"labeling config -> {out / 'labeling_config.xml'}")
    print(f"predictions have model_version {args.model_version!r}: select it in the project's settings "
          "to see them; import the tasks in this order (most informative first)")
    return 0


def _cvat(args, selection: dict, out: Path) -> int:
    names = cvat.frame_names(selection["images"], args.frame_names)
    try:
        xml = cvat.selection_to_cvat_xml(selection, names, args.shapes, args.task_name, args.polygon_tolerance)
    except ValueError as e:
        raise InputError(str(e), args.selection) from e
    coco = cvat.selection_to_cvat_coco(selection, names)
    paths = [os.path.join(args.image_root, im["file_name"]) if args.image_root else im["file_name"]
             for im in selection["images"]]
    write_text(out / "annotations.xml", xml)
    # COCO 1.0 in the layout CVAT exports and datumaro expects: annotations/instances_default.json,
    # also zipped for upload
    write_json(out / "coco" / "annotations" / "instances_default.json", coco)
    with atomic_open(out / "coco.zip", "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("annotations/instances_default.json", json.dumps(coco))
    write_text(out / "images.txt", "".join(p + "\n" for p in paths))
    write_json(out / "cvat_labels.json", cvat.cvat_labels_spec(selection["categories"]), indent=1)
    print(f"wrote {len(names)} frames, {len(selection.get('annotations', []))} shapes -> {out / 'annotations.xml'} "
          f"(CVAT 1.1) and {out / 'coco.zip'} (COCO 1.0)")
    print(f"image list in rank order -> {out / 'images.txt'}: create the task with sorting method 'predefined' "
          f"and the labels in {out / 'cvat_labels.json'}")
    return 0
