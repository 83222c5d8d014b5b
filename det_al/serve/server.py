"""Run the backend: load the model once, then serve the WSGI app with the standard library.

The HTTP server is :mod:`wsgiref`'s with :class:`socketserver.ThreadingMixIn` (one thread per
request, daemon threads): no dependency, enough for the handful of clients a Label Studio
project has (the server itself, a few annotators opening tasks), and inference is serialised by
the backend's lock anyway. Behind a production WSGI server, mount :func:`make_backend_app`'s app.
"""

from __future__ import annotations

import logging
import os
import socketserver
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from det_al.serve.app import MAX_BODY, make_app
from det_al.serve.paths import ImageRoots
from det_al.serve.predict import Backend

logger = logging.getLogger(__name__)


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server, one daemon thread per request, with a listen backlog of 128 instead of
    socketserver's 5: with a full backlog the kernel drops new connections and the client
    retries after 1 s, past Label Studio's webhook timeout. ``benchmarks/bench_serve.py
    --clients 32 --events 640``, three runs each: backlog 5 put 7, 24 and 30 events over 1 s
    (max 2.06 s; one run lost 174 events to failed connections), backlog 128 none (max 141 ms)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class QuietHandler(WSGIRequestHandler):
    """Request lines go to the log (debug), not to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


def checkpoint_version(checkpoint: str | os.PathLike) -> str:
    """``det_al-`` and the first 12 hex digits of the checkpoint file's SHA-256: a retrained
    checkpoint gets a new model version by itself."""
    import hashlib

    h = hashlib.sha256()
    with open(checkpoint, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "det_al-" + h.hexdigest()[:12]


def load_backend_model(model: Any, config: Any = None, categories: Any = None,
                       device: str = "cpu") -> tuple[Any, str]:
    """``(LoadedModel, default model version)`` from a checkpoint file, what
    :func:`det_al.load_model` returns, or a torchvision detector held in memory."""
    import det_al
    from det_al.api import LoadedModel, as_config, model_sha256, unwrap_model

    if isinstance(model, LoadedModel):
        return model, "det_al-" + model_sha256(unwrap_model(model.model))[:12]
    if isinstance(model, (str, os.PathLike)):
        if not Path(model).is_file():
            raise det_al.InputError("checkpoint not found", model)
        loaded = det_al.load_model(model, config, device=device)
        if categories is not None:
            loaded = loaded._replace(categories=list(categories))
        return loaded, checkpoint_version(model)
    from det_al.data.sources import resolve_categories
    from det_al.models.build import model_num_classes

    net = unwrap_model(model)
    num_classes = model_num_classes(net)
    loaded = LoadedModel(net, as_config(config, num_classes), resolve_categories(categories, num_classes, None,
                                                                                 "categories"))
    return loaded, "det_al-" + model_sha256(net)[:12]


def make_backend_app(model: Any, *, config: Any = None, categories: Any = None, image_root: Any = None,
                     local_files_root: Any = None, url_prefix: str | None = None, scores: Any = None,
                     passes: int | None = None, seed: int | None = None, model_version: str | None = None,
                     journal: Any = None, auth: tuple[str, str] | None = None, max_body: int = MAX_BODY,
                     min_score: float = 0.0, device: str = "cpu"):
    """The WSGI app of a backend for ``model`` (``app.backend`` is the :class:`Backend`).

    ``model``: a checkpoint file (loaded here, once), what :func:`det_al.load_model` returns, or
    a torchvision detector you hold (with ``categories``, names or COCO dicts, one per class;
    ``config`` for its passes and scoring). The default ``model_version`` is ``det_al-`` and 12
    hex digits of the checkpoint file's (or the weights') SHA-256, so new weights get a new
    version. ``journal`` defaults to ``journal.jsonl`` in the working folder (the scores folder,
    an input, is left alone). The other arguments are those of :func:`serve_backend`.

    >>> import det_al                                                                   # doctest: +SKIP
    >>> app = det_al.make_backend_app("model.pt", local_files_root="/data", scores="scores/")  # doctest: +SKIP
    >>> # mount `app` in any WSGI server, e.g. waitress.serve(app, host="127.0.0.1", port=9090)
    """
    roots = ImageRoots.make(image_root, local_files_root, url_prefix)
    loaded, version = load_backend_model(model, config, categories, device)
    backend = Backend(loaded, roots, model_version or version, scores=scores, passes=passes, seed=seed,
                      min_score=min_score)
    if journal is None:
        journal = Path("journal.jsonl")
    return make_app(backend, journal, auth=auth, max_body=max_body)


def serve_backend(model: Any, *, host: str = "127.0.0.1", port: int = 9090, ready: Any = None,
                  **options: Any) -> None:
    """Serve ``model`` (a checkpoint file, or see :func:`make_backend_app`) as a Label Studio
    ML backend on ``host:port`` until interrupted.

    ``options`` are those of :func:`make_backend_app`: ``config``, ``image_root`` /
    ``local_files_root`` / ``url_prefix`` (where task images are, see
    :class:`det_al.serve.paths.ImageRoots`), ``scores`` (a ``det-al score`` folder answered
    without a model run), ``passes``, ``seed``, ``model_version`` (default: from the checkpoint's
    hash), ``journal``, ``auth`` (``(user, password)`` for HTTP Basic), ``max_body``,
    ``min_score``, ``device``. ``ready(url, app)`` is called once the socket listens.

    >>> import det_al                                                        # doctest: +SKIP
    >>> det_al.serve_backend("model.pt", local_files_root="/data", scores="scores/")  # doctest: +SKIP
    """
    from det_al.errors import InputError

    app = make_backend_app(model, **options)
    try:
        server = make_server(host, port, app, server_class=ThreadingWSGIServer, handler_class=QuietHandler)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    with server:
        url = f"http://{host}:{server.server_port}"
        if ready is not None:
            ready(url, app)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
