"""The annotation journal: Label Studio's webhook events, appended durably, folded back into tasks.

Label Studio posts every project event to ``/webhook`` synchronously inside the annotator's
request, with a 1 s timeout and no retry: the handler must be quick and must not lose an event.
:class:`Journal` appends each annotation event as one JSON line (``received`` time, ``action``,
``project`` id, and the event's ``annotation``/``task`` or ``annotations`` payload), flushed and
``fsync``-ed before the request is answered; a lock keeps lines from concurrent requests whole.
Nothing else happens in the request: training runs later, from the file (:mod:`det_al.serve.retrain`).

:func:`journal_tasks` folds the journal into the shape of Label Studio's JSON export (one task
per task id, ``{"id", "data", "annotations"}`` with the latest version of each annotation;
deleted annotations removed), which :func:`det_al.annotation.label_studio_import.tasks_to_coco` reads.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Mapping

logger = logging.getLogger(__name__)

#: Events that carry one annotation (``annotation``, ``task``) or a list of them under the same keys.
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
#: Events that remove annotations (``annotations``: ``[{"id": ...}]``).
DELETE_EVENTS = ("ANNOTATIONS_DELETED",)
JOURNALLED = ANNOTATION_EVENTS + DELETE_EVENTS


def _project_id(event: Mapping[str, Any]) -> Any:
    project = event.get("project")
    return project.get("id") if isinstance(project, Mapping) else project


class Journal:
    """An append-only JSON-lines file of annotation events (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def record(self, event: Mapping[str, Any]) -> bool:
        """Append ``event`` if it is an annotation event; ``True`` when written."""
        action = event.get("action")
        if action not in JOURNALLED:
            return False
        line: dict[str, Any] = {"received": time.time(), "action": action, "project": _project_id(event)}
        if action in DELETE_EVENTS:
            line["annotations"] = [{"id": a.get("id")} for a in event.get("annotations") or [] if isinstance(a, Mapping)]
        else:
            line["annotation"] = event.get("annotation")
            line["task"] = event.get("task")
        data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        return True


def _pairs(line: Mapping[str, Any]) -> list[tuple[dict, dict]]:
    """``(annotation, task)`` pairs of one journal line (bulk events hold lists)."""
    annotation, task = line.get("annotation"), line.get("task")
    if isinstance(annotation, list):
        tasks = task if isinstance(task, list) else [task] * len(annotation)
        by_id = {t.get("id"): t for t in tasks if isinstance(t, Mapping)}
        return [(a, by_id.get(a.get("task"), tasks[i] if i < len(tasks) else None))
                for i, a in enumerate(annotation) if isinstance(a, Mapping)]
    return [(annotation, task)] if isinstance(annotation, Mapping) else []


def journal_tasks(path: str | os.PathLike, project: Any = None) -> list[dict]:
    """The journal folded into Label Studio JSON-export tasks, in the order tasks first appear.

    ``project``: keep only that project's events (its id). A line that is not JSON (a write cut
    short by a crash can only be the last one) is skipped with a warning.
    """
    from det_al.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError("journal not found", path)
    annotations: dict[Any, dict] = {}
    tasks: dict[Any, dict] = {}
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                logger.warning("%s:%d: not a JSON line, skipped", path, number)
                continue
            if project is not None and str(line.get("project")) != str(project):
                continue
            if line.get("action") in DELETE_EVENTS:
                for a in line.get("annotations") or []:
                    annotations.pop(a.get("id"), None)
                continue
            for annotation, task in _pairs(line):
                task_id = annotation.get("task") or (task or {}).get("id")
                if task_id is None:
                    continue
                if isinstance(task, Mapping) and task.get("data") is not None:
                    tasks[task_id] = {"id": task_id, "data": task["data"]}
                else:
                    tasks.setdefault(task_id, {"id": task_id, "data": {}})
                annotations.pop(annotation.get("id"), None)  # an update moves it to the end
                annotations[annotation.get("id")] = {**annotation, "task": task_id}
    out = {task_id: {**task, "annotations": []} for task_id, task in tasks.items()}
    for annotation in annotations.values():
        out[annotation["task"]]["annotations"].append(annotation)
    return [task for task in out.values() if task["annotations"]]
