"""The WSGI app of ``det-al serve``: the four JSON endpoints Label Studio's ML backend calls.

=================  ==========================================================================
``GET /health``    ``{"status": "UP", "model_version", ...counters}``; the model is loaded
                   before the app exists, so a 200 means ready
``POST /setup``    ``{"model_version"}`` (Label Studio calls it after every ``/health``)
``POST /predict``  ``{"tasks": [...], "label_config": XML}`` -> ``{"results": [entry per task]}``
                   (:meth:`det_al.serve.predict.Backend.predict`)
``POST /webhook``  any event -> 200 at once; annotation events are appended to the journal
                   first (:class:`det_al.serve.journal.Journal`); ``START_TRAINING`` only logs
                   how to retrain: training never runs inside a request
=================  ==========================================================================

:func:`make_app` returns a plain WSGI callable, so the backend can be mounted in any WSGI server
(gunicorn, waitress, a werkzeug dispatcher) as well as run by :func:`det_al.serve.server.serve_backend`.
Guards: optional HTTP Basic auth (``auth=(user, password)``; Label Studio sends it when the
backend is connected with "Basic auth"), bodies over ``max_body`` bytes refused with 413 before
they are read, bodies that are not a JSON object refused with 400, unknown paths 404, wrong
methods 405. An unexpected error inside ``/predict`` answers 500 with one line and is logged;
the server keeps running.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from typing import Any, Callable, Iterable

from det_al.serve.journal import Journal
from det_al.serve.predict import Backend

logger = logging.getLogger(__name__)

#: Largest request body accepted (bytes): a predictions request of a few thousand tasks fits.
MAX_BODY = 32 * 1024 * 1024

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            411: "Length Required", 413: "Payload Too Large", 500: "Internal Server Error"}


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _read_json(environ: dict, max_body: int) -> dict:
    """The request body as a JSON object; :class:`HTTPError` for a missing, too large or bad body."""
    length_text = environ.get("CONTENT_LENGTH") or ""
    if not length_text.strip():
        raise HTTPError(411, "the request needs a Content-Length")
    try:
        length = int(length_text)
    except ValueError:
        raise HTTPError(400, f"bad Content-Length {length_text!r}") from None
    if length < 0:
        raise HTTPError(400, f"bad Content-Length {length_text!r}")
    if length > max_body:
        raise HTTPError(413, f"body of {length} bytes is over the limit of {max_body}")
    body = environ["wsgi.input"].read(length) if length else b""
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPError(400, f"body is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise HTTPError(400, f"body must be a JSON object, got {type(value).__name__}")
    return value


def _authorized(environ: dict, auth: tuple[str, str]) -> bool:
    header = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    # compare both, always: no early exit that tells which one was wrong
    ok_user = hmac.compare_digest(user.encode(), auth[0].encode())
    ok_password = hmac.compare_digest(password.encode(), auth[1].encode())
    return ok_user and ok_password


def make_app(backend: Backend, journal: Journal | str | None = None, *, auth: tuple[str, str] | None = None,
             max_body: int = MAX_BODY) -> Callable[[dict, Callable], Iterable[bytes]]:
    """The WSGI app for ``backend``; annotation events go to ``journal`` (a :class:`Journal` or
    its file; ``None``: events are answered and not kept)."""
    if isinstance(journal, (str, bytes)) or hasattr(journal, "__fspath__"):
        journal = Journal(journal)

    def health(environ: dict) -> dict:
        c = backend.counters
        return {"status": "UP", "model_version": backend.model_version, "tasks": c.tasks,
                "from_scores": c.from_scores, "scored": c.scored, "unreadable": c.unreadable}

    def setup(environ: dict) -> dict:
        body = _read_json(environ, max_body)
        logger.info("setup from project %s", body.get("project"))
        return {"model_version": backend.model_version}

    def predict(environ: dict) -> dict:
        body = _read_json(environ, max_body)
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise HTTPError(400, "body needs 'tasks', a list")
        label_config = body.get("label_config")
        if label_config is not None and not isinstance(label_config, str):
            raise HTTPError(400, "'label_config' must be a string")
        try:
            results = backend.predict(tasks, label_config)
        except ValueError as e:  # a labeling config det_al cannot read
            raise HTTPError(400, str(e)) from None
        logger.info("predict: %d tasks, %d answered", len(tasks), sum("result" in r for r in results))
        return {"results": results}

    def webhook(environ: dict) -> dict:
        event = _read_json(environ, max_body)
        action = event.get("action")
        kept = journal is not None and journal.record(event)
        if action == "START_TRAINING":
            logger.info("START_TRAINING from project %s: run `det-al retrain` on the journal%s; training never "
                        "runs inside the webhook", _project(event), f" {journal.path}" if journal else "")
        return {"status": "ok", "action": action, "journalled": kept}

    routes: dict[str, tuple[str, Callable[[dict], dict]]] = {
        "/": ("GET", health), "/health": ("GET", health), "/setup": ("POST", setup),
        "/predict": ("POST", predict), "/webhook": ("POST", webhook),
    }

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO") or "/", environ.get("REQUEST_METHOD", "GET")
        headers = [("Content-Type", "application/json")]
        try:
            if auth is not None and not _authorized(environ, auth):
                headers.append(("WWW-Authenticate", 'Basic realm="det-al serve"'))
                raise HTTPError(401, "authentication required")
            route = routes.get(path.rstrip("/") or "/")
            if route is None:
                raise HTTPError(404, f"no endpoint {path}")
            if method != route[0]:
                headers.append(("Allow", route[0]))
                raise HTTPError(405, f"{path} takes {route[0]}")
            status, answer = 200, route[1](environ)
        except HTTPError as e:
            status, answer = e.status, {"error": str(e)}
        except Exception as e:  # never a dead server: one line to the client, the traceback to the log
            logger.exception("%s %s failed", method, path)
            status, answer = 500, {"error": f"{type(e).__name__}: {e}"}
        body = json.dumps(answer).encode()
        headers.append(("Content-Length", str(len(body))))
        start_response(f"{status} {_REASONS.get(status, '')}", headers)
        return [body]

    app.backend = backend  # type: ignore[attr-defined]
    app.journal = journal  # type: ignore[attr-defined]
    return app


def _project(event: dict) -> Any:
    project = event.get("project")
    return project.get("id") if isinstance(project, dict) else project
