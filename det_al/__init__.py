"""det_al: active learning for torchvision detectors.

Stochastic passes (MC dropout in the heads, test-time augmentation) over each pool image,
matched by IoU into objects, scored into one informativeness value per image.

The public API (see :mod:`det_al.api`)::

    import det_al

    scores = det_al.score_images(model, "pool/", passes=10, seed=0)   # your detector, your images
    batch = det_al.select(scores, "top", budget=50)
    det_al.export_label_studio(batch, "ls/", url_prefix="https://host/pool")
    labels = det_al.import_label_studio("export.json", batch, "labels/")   # annotators' work back
    det_al.merge("train.json", labels.labels, "pool.json", out_dir="next/")
    app = det_al.make_backend_app(model, image_root="pool/")          # live Label Studio ML backend (WSGI)

Names are imported on first use, so ``import det_al`` stays cheap (no torch until needed).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# The public API, listed once: name -> the module that defines it.
_EXPORTS = {
    "score_images": "det_al.api",
    "Scores": "det_al.scores",
    "ImageScore": "det_al.scores",
    "select": "det_al.api",
    "Selection": "det_al.scores",
    "export_label_studio": "det_al.annotation.export",
    "export_cvat": "det_al.annotation.export",
    "LabelStudioExport": "det_al.annotation.export",
    "CvatExport": "det_al.annotation.export",
    "import_label_studio": "det_al.annotation.imports",
    "import_cvat": "det_al.annotation.imports",
    "Imported": "det_al.annotation.imports",
    "merge": "det_al.annotation.merge",
    "MergeResult": "det_al.annotation.merge",
    "load_model": "det_al.api",
    "LoadedModel": "det_al.api",
    "mc_dropout": "det_al.api",
    "preserved_model": "det_al.api",
    "unwrap_model": "det_al.api",
    "model_device": "det_al.api",
    "Config": "det_al.config",
    "load_config": "det_al.config",
    "InputError": "det_al.errors",
    "serve_backend": "det_al.serve.server",
    "make_backend_app": "det_al.serve.server",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'det_al' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
