"""Export a selection for annotators: Label Studio tasks and labeling config, CVAT XML and COCO.

The library side of ``det-al export``: image URLs (:func:`det_al.annotation.label_studio.image_url_function`),
size checks against the image files (:func:`det_al.selection.files.check_image_sizes`), the
conversions of :mod:`det_al.annotation.label_studio` and :mod:`det_al.annotation.cvat`, and atomic writes. Each
function returns what it wrote, in memory too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from det_al.annotation import cvat, label_studio
from det_al.data.coco import load_coco
from det_al.data.files import atomic_open, write_json, write_text
from det_al.errors import InputError
from det_al.scores import Scores, Selection
from det_al.selection.files import check_image_sizes

logger = logging.getLogger(__name__)

#: What the exporters take: a selection, or scores (every scored image, in rank order), or the
#: COCO dict or ``selection.json`` of a selection.
Exportable = Selection | Scores | Mapping | str | os.PathLike


def _as_selection(selection: Exportable) -> Exportable:
    if isinstance(selection, Scores):
        return selection.select("top", budget=max(len(selection), 1))
    return selection


def _default_root(coco: Mapping, image_root: str | os.PathLike | None) -> tuple[str | os.PathLike | None, bool]:
    """``image_root`` if given, else the root the selection's scores remember (its ``info``);
    and whether to check the image sizes against it: always for a given root, for the
    remembered one only where it exists (the scores may come from another machine)."""
    if image_root is not None:
        return image_root, True
    remembered = (coco.get("info") or {}).get("image_root")
    if remembered and not Path(remembered).is_dir():
        logger.warning("the scores' image root %s is not on this machine: image sizes not checked", remembered)
        return remembered, False
    return remembered, bool(remembered)


def _selection_coco(selection: Exportable) -> tuple[dict, str | None]:
    """The selection's COCO dict and its file (for errors), each image checked to have a size."""
    if isinstance(selection, Selection):
        coco, where = selection.coco, None
    elif isinstance(selection, Mapping):
        coco, where = dict(selection), None
    else:
        coco, where = load_coco(selection), os.fspath(selection)
    for image in coco["images"]:
        if "width" not in image or "height" not in image:
            raise InputError(f"image {image['id']} has no width/height", where)
    return coco, where


_MEMORY_NAME = re.compile(r"images\[\d+\]")


def refuse_memory_images(coco: dict, image_root: str | os.PathLike | None, where: str | None = None) -> None:
    """Refuse a selection of in-memory images (``det_al.score_images`` names PIL images, arrays and
    dataset items ``images[i]``): an annotation tool needs image files, and such a name would reach
    it as a URL of nothing (``images%5B1%5D``). A file that is really named so is accepted."""
    root = Path(image_root) if image_root is not None else Path(".")
    for image in coco["images"]:
        name = str(image["file_name"])
        if _MEMORY_NAME.fullmatch(name) and not (root / name).is_file():
            raise InputError(
                f"image {image['id']} is {name!r}, an in-memory image det_al scored: an annotation tool needs "
                "image files. Save the images (e.g. image.save(f'pool/{i}.png')) and score that folder, or give "
                "image_url=... to say where each image is served", where)


@dataclass(frozen=True)
class LabelStudioExport:
    """What :func:`export_label_studio` made: the tasks (one per image, rank order), the labeling
    config XML, and the files written (``{"tasks": path, "labeling_config": path}``, empty when
    nothing was written)."""

    tasks: list[dict]
    labeling_config: str
    files: dict[str, Path] = field(default_factory=dict)


def export_label_studio(
    selection: Exportable,
    out_dir: str | os.PathLike | None = None,
    *,
    local_files_root: str | os.PathLike | None = None,
    url_prefix: str | None = None,
    cloud_prefix: str | None = None,
    image_url: Callable[[dict], str] | None = None,
    image_root: str | os.PathLike | None = None,
    model_version: str = "det_al",
    shapes: str = "polygons",
    polygon_tolerance: float = 0.0,
    allow_outside_root: bool = False,
) -> LabelStudioExport:
    """Label Studio tasks with the model's detections as predictions, and the labeling config.

    Image URLs come from exactly one of ``local_files_root`` (Label Studio's local-files document
    root; needs ``image_root``), ``url_prefix`` (http(s)), ``cloud_prefix`` (``s3://``, ``gs://``,
    ``azure-blob://``) or ``image_url(image_dict) -> str``. With ``image_root`` every image's
    size is checked against the file (after EXIF rotation) and a ``file_name`` outside it is
    refused unless ``allow_outside_root``. ``shapes``: ``polygons`` (masks
    traced as polygons) or ``boxes``. With ``out_dir``, writes ``tasks.json`` and
    ``labeling_config.xml`` there. ``selection`` may be :class:`Scores` (every scored image);
    ``image_root`` defaults to the root the scores remember (:attr:`Scores.image_root`; its sizes
    are checked where that folder exists: scores made on another machine export too).
    """
    coco, where = _selection_coco(_as_selection(selection))
    image_root, check = _default_root(coco, image_root)
    if image_url is None:
        refuse_memory_images(coco, image_root, where)
    url = label_studio.image_url_function(local_files_root=local_files_root, url_prefix=url_prefix,
                                          cloud_prefix=cloud_prefix, image_url=image_url, image_root=image_root)
    if shapes not in ("polygons", "boxes"):
        raise InputError(f"shapes must be polygons or boxes, got {shapes!r}")
    check_image_sizes(coco, image_root if check else None, where, allow_outside_root)
    polygons = shapes == "polygons" and label_studio.has_masks(coco)
    try:
        tasks = label_studio.selection_to_tasks(coco, url, model_version, polygons=polygons, tolerance=polygon_tolerance)
    except ValueError as e:
        raise InputError(str(e), where) from e
    config = label_studio.labeling_config(coco["categories"], polygons=polygons)
    files: dict[str, Path] = {}
    if out_dir is not None:
        out = Path(out_dir)
        write_json(out / "tasks.json", tasks, indent=1)
        write_text(out / "labeling_config.xml", config)
        files = {"tasks": out / "tasks.json", "labeling_config": out / "labeling_config.xml"}
    return LabelStudioExport(tasks, config, files)


@dataclass(frozen=True)
class CvatExport:
    """What :func:`export_cvat` wrote: the "CVAT for images 1.1" XML, the "COCO 1.0" dict, the
    image paths in rank order, the label spec, and the files (``annotations``, ``coco``,
    ``coco_zip``, ``images``, ``labels``)."""

    xml: str
    coco: dict
    images: list[str]
    labels: list[dict]
    files: dict[str, Path]


def export_cvat(
    selection: Exportable,
    out_dir: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    frame_names: str = "basename",
    shapes: str = "mask",
    polygon_tolerance: float = 0.0,
    task_name: str = "det_al selection",
    allow_outside_root: bool = False,
) -> CvatExport:
    """CVAT pre-annotations for a selection, written into ``out_dir``: ``annotations.xml``,
    ``coco.zip`` (and ``coco/annotations/instances_default.json``), ``images.txt`` (the images in
    rank order: create the task with sorting ``predefined``) and ``cvat_labels.json``.

    ``frame_names``: ``basename`` (local upload) or ``path`` (share or cloud storage); ``shapes``:
    ``mask``, ``polygon`` or ``box``. With ``image_root`` the sizes are checked against the files (and file
    names outside it refused unless ``allow_outside_root``). ``selection`` may be :class:`Scores`;
    ``image_root`` defaults to the root the scores remember (:attr:`Scores.image_root`; its sizes
    are checked where that folder exists: scores made on another machine export too).
    """
    coco, where = _selection_coco(_as_selection(selection))
    image_root, check = _default_root(coco, image_root)
    refuse_memory_images(coco, image_root, where)
    check_image_sizes(coco, image_root if check else None, where, allow_outside_root)
    try:
        names = cvat.frame_names(coco["images"], frame_names)
        xml = cvat.selection_to_cvat_xml(coco, names, shapes, task_name, polygon_tolerance)
    except ValueError as e:
        raise InputError(str(e), where) from e
    cvat_coco = cvat.selection_to_cvat_coco(coco, names)
    paths = [os.path.join(image_root, im["file_name"]) if image_root else im["file_name"] for im in coco["images"]]
    labels = cvat.cvat_labels_spec(coco["categories"])
    out = Path(out_dir)
    files = {"annotations": out / "annotations.xml", "coco": out / "coco" / "annotations" / "instances_default.json",
             "coco_zip": out / "coco.zip", "images": out / "images.txt", "labels": out / "cvat_labels.json"}
    write_text(files["annotations"], xml)
    # COCO 1.0 in the layout CVAT exports and datumaro expects, also zipped for upload
    write_json(files["coco"], cvat_coco)
    with atomic_open(files["coco_zip"], "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("annotations/instances_default.json", json.dumps(cvat_coco))
    write_text(files["images"], "".join(p + "\n" for p in paths))
    write_json(files["labels"], labels, indent=1)
    return CvatExport(xml, cvat_coco, paths, labels, files)
