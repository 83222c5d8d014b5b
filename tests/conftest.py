"""Shared fixtures: a tiny synthetic pool, an untrained tiny checkpoint (no download), and a real
Label Studio server for the tests that need one."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_pool(tmp_path_factory) -> dict:
    """Six synthetic 96-px images (three old, three drifted) and a COCO pool file for them."""
    from det_al.data.synthetic import generate

    root = tmp_path_factory.mktemp("pool")
    old = generate(root, 3, "old", seed=1, start_id=1, size=96)
    new = generate(root, 3, "drifted", seed=2, start_id=4, size=96)
    pool = {
        "images": old["images"] + new["images"],
        "categories": old["categories"],
        "annotations": [],
    }
    (root / "pool.json").write_text(json.dumps(pool))
    return {"root": root, "pool": root / "pool.json", "coco": pool}


def _tiny_checkpoint(path: Path, name: str, categories: list[dict]) -> Path:
    from det_al.models.checkpoint import save_checkpoint
    from det_al.config import config_from_dict
    from det_al.models.build import build_model

    config = config_from_dict(
        {
            "model": {
                "name": name,
                "num_classes": len(categories) + 1,
                "options": {"min_size": 96, "max_size": 96, "box_score_thresh": 0.0},
            },
            "passes": {"passes": 3, "dropout": 0.3},
        }
    )
    torch.manual_seed(0)
    model = build_model(config.model)
    save_checkpoint(path, model, config, categories)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_pool) -> Path:
    """An untrained maskrcnn_tiny checkpoint with score threshold 0, so it detects something."""
    path = tmp_path_factory.mktemp("ckpt") / "maskrcnn_tiny.pt"
    return _tiny_checkpoint(path, "maskrcnn_tiny", tiny_pool["coco"]["categories"])


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Four 64-px training images and two validation images, synthetic, with masks."""
    from det_al.data.synthetic import generate

    root = tmp_path_factory.mktemp("data")
    train = generate(root, 4, "old", seed=3, start_id=1, size=64)
    val = generate(root, 2, "old", seed=4, start_id=10, size=64)
    (root / "train.json").write_text(json.dumps(train))
    (root / "val.json").write_text(json.dumps(val))
    image_root = root if (root / train["images"][0]["file_name"]).exists() else root / "images"
    return {"root": image_root, "train": root / "train.json", "val": root / "val.json", "coco": train}


def load_benchmark(name: str):
    """The module of ``benchmarks/NAME.py`` (benchmarks are scripts, not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- Label Studio server

START_TIMEOUT_S = 420


def _label_studio_executable() -> Path:
    exe = Path(os.environ.get("DET_AL_LABEL_STUDIO", "/tmp/ls-venv/bin/label-studio"))
    if not exe.is_file():
        reason = (f"Label Studio server not installed: {exe} not found (set DET_AL_LABEL_STUDIO to the "
                  "label-studio executable; .ci/setup_annotation_tools.sh installs one)")
        if os.environ.get("DET_AL_REQUIRE_ANNOTATION_TOOLS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    token: str
    documents: Path
    python: Path
    user: str = ""
    password: str = ""  # for a browser's login

    def call(self, method: str, path: str, body=None, raw: bool = False):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Token {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                content = response.read()
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{method} {path}: HTTP {e.code}: {e.read()[:1000]!r}") from None
        return content if raw else json.loads(content)

    def sdk(self, code: str, payload) -> object:
        """Run ``code`` with the server's Python (label-studio-sdk there); it reads ``payload``
        from stdin as JSON and prints its answer as JSON."""
        done = subprocess.run([str(self.python), "-c", code], input=json.dumps(payload), capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A Label Studio server on 127.0.0.1 for the module's tests (see :func:`_label_studio_executable`).

    label-studio runs in its own virtual environment (it pins its own Django and numpy):
    ``DET_AL_LABEL_STUDIO`` names its ``label-studio`` executable (default
    ``/tmp/ls-venv/bin/label-studio``; ``.ci/setup_annotation_tools.sh`` installs it). Without
    it the tests skip, unless ``DET_AL_REQUIRE_ANNOTATION_TOOLS=1`` (CI), where they fail.
    """
    exe = _label_studio_executable()
    root = tmp_path_factory.mktemp("label_studio")
    data, documents = root / "data", root / "documents"
    template = Path(os.environ.get("DET_AL_LABEL_STUDIO_TEMPLATE", exe.parent.parent / "det_al-data-template"))
    if (template / "label_studio.sqlite3").is_file():  # a migrated database: saves a minute or two
        shutil.copytree(template, data)
    documents.mkdir()
    port, token, password = _free_port(), secrets.token_hex(20), secrets.token_hex(12)
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_USERNAME": "det-al-test@example.com",
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",  # 1.23 turns legacy tokens off by default
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(documents),
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        # Sentry off: an offline server has nowhere to report to, and the SDK is the part of
        # Label Studio's dependencies that breaks it at start (sentry-sdk 3 rejects its options).
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        # an ML backend on 127.0.0.1 (det-al serve) is refused unless both are off
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
    }
    env.pop("HOST", None)
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--host",
             f"http://127.0.0.1:{port}", "--port", str(port)],
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"label-studio exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"label-studio did not answer within {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield Server(url, token, documents, exe.parent / "python", env["LABEL_STUDIO_USERNAME"], password)
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
