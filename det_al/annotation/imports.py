"""Read finished annotations back: Label Studio's JSON export and CVAT's exports into a labels file.

The library side of ``det-al import``: :func:`import_label_studio` and :func:`import_cvat`
take the export and the selection it was made from, and return the labels (a COCO dict, see
:mod:`det_al.annotation.merge`) with a report of what was skipped; with ``out_dir`` they write
``labels.json`` and ``import_report.json`` there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from det_al.annotation import cvat_import, label_studio_import
from det_al.annotation.merge import ImportReport
from det_al.data.coco import load_coco
from det_al.data.files import read_json, write_json
from det_al.scores import Selection


@dataclass(frozen=True)
class Imported:
    """What an import read: :attr:`labels` (the COCO labels file), :attr:`report` and the files
    written (``{"labels": path, "report": path}``, empty when nothing was written)."""

    labels: dict
    report: ImportReport
    files: dict[str, Path] = field(default_factory=dict)


def _selection_coco(selection: Selection | Mapping | str | os.PathLike) -> dict:
    if isinstance(selection, Selection):
        return selection.coco
    if isinstance(selection, Mapping):
        return dict(selection)
    return load_coco(selection)


def _written(labels: dict, report: ImportReport, out_dir: str | os.PathLike | None) -> Imported:
    if out_dir is None:
        return Imported(labels, report)
    out = Path(out_dir)
    files = {"labels": out / "labels.json", "report": out / "import_report.json"}
    write_json(files["labels"], labels)
    write_json(files["report"], report.to_dict(), indent=1)
    return Imported(labels, report, files)


def import_label_studio(
    export: str | os.PathLike | list[dict],
    selection: Selection | Mapping | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    keep_empty: bool = False,
) -> Imported:
    """Label Studio's JSON export (a file, or its list of tasks) -> the labels of the images of
    ``selection`` (a :class:`Selection`, its COCO dict or ``selection.json``). Tasks without a
    finished annotation are skipped (``keep_empty`` keeps images labelled with no object)."""
    path = None if isinstance(export, list) else Path(export)
    tasks = export if path is None else read_json(path)
    labels, report = label_studio_import.tasks_to_coco(tasks, _selection_coco(selection), keep_empty, path)
    return _written(labels, report, out_dir)


def import_cvat(
    export: str | os.PathLike,
    selection: Selection | Mapping | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    frame_names: str = "basename",
    keep_empty: bool = False,
    finished: Sequence[str] | str | None = None,
) -> Imported:
    """CVAT's export (the zip it downloads, or the ``annotations.xml`` / COCO JSON in it) -> the
    labels of the images of ``selection``. ``frame_names`` as given to :func:`det_al.export_cvat`.

    A frame that still holds only the model's pre-annotations, unchanged, is nobody's work and is
    skipped, unless ``finished`` names it (frame names a person finished, or ``"all"``): see
    :mod:`det_al.annotation.cvat_import`."""
    labels, report = cvat_import.cvat_export_to_coco(Path(export), _selection_coco(selection), frame_names,
                                                     keep_empty, finished)
    return _written(labels, report, out_dir)
