"""``det-al serve``: det_al as a Label Studio ML backend (see :mod:`det_al.serve`)."""

from __future__ import annotations

import argparse
import os
import sys

AUTH_ENV = "DET_AL_SERVE_BASIC_AUTH"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", "-c", required=True, help="det_al checkpoint (or torchvision state dict with --config)")
    parser.add_argument("--config", help="YAML config (needed for a plain state dict; its passes/scoring win)")
    parser.add_argument("--image-root", "-r", help="folder of the task images by file_name / --url-prefix, and of --scores' file names")
    parser.add_argument("--local-files-root", help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (for /data/local-files/ URLs)")
    parser.add_argument("--url-prefix", help="the --url-prefix the tasks were exported with (URL -> --image-root)")
    parser.add_argument("--scores", "-s", help="a det-al score output folder: its images are answered without a model run")
    parser.add_argument("--passes", "-T", type=int, help="passes for images scored on demand (default: the config's)")
    parser.add_argument("--seed", type=int, help="seed of the passes (default: the config's)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", "-p", type=int, default=9090, help="port (default 9090; 0: any free port)")
    parser.add_argument("--model-version", help="version in every answer (default: det_al- and the checkpoint's hash)")
    parser.add_argument("--journal", help="annotation journal file, appended to (default: ./journal.jsonl)")
    parser.add_argument("--min-score", type=float, default=0.0, help="send no region below this detector confidence")
    parser.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body accepted (MiB)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.epilog = (f"HTTP Basic auth: set {AUTH_ENV}=USER:PASSWORD in the environment (kept out of the process "
                     "list) and give the same user and password when connecting the model in Label Studio.")


def run(args: argparse.Namespace) -> int:
    from det_al.errors import InputError
    from det_al.serve.server import serve_backend

    auth = None
    if os.environ.get(AUTH_ENV):
        user, sep, password = os.environ[AUTH_ENV].partition(":")
        if not sep or not user or not password:
            raise InputError(f"{AUTH_ENV} must be USER:PASSWORD")
        auth = (user, password)
    if args.passes is not None and args.passes < 1:
        raise InputError(f"--passes must be at least 1, got {args.passes}")
    if args.host not in ("127.0.0.1", "localhost", "::1") and auth is None:
        print(f"det-al serve: warning: binding {args.host} without {AUTH_ENV}: anyone who reaches this port "
              "can read the model's predictions", file=sys.stderr)

    def ready(url: str, app) -> None:
        backend = app.backend
        print(f"det-al serve: model {backend.model_version} on {url} ({len(backend.images)} scored images; "
              f"journal {app.journal.path if app.journal else '-'})", flush=True)

    serve_backend(args.checkpoint, host=args.host, port=args.port, ready=ready, config=args.config,
          image_root=args.image_root, local_files_root=args.local_files_root, url_prefix=args.url_prefix,
          scores=args.scores, passes=args.passes, seed=args.seed, model_version=args.model_version,
          journal=args.journal, auth=auth, max_body=int(args.max_body_mb * 1024 * 1024),
          min_score=args.min_score, device=args.device)
    return 0
