"""Shared fixtures: a tiny synthetic pool, an untrained tiny checkpoint (no download), one tiny
model of each detector family, a hand-written scored pool, the benchmark scripts, headless
Chromium, and a real Label Studio server for the tests that need one.

Test files never import each other or this file (pytest runs with ``--import-mode=importlib``):
what several of them share lives here, or in the ``conftest.py`` of their folder, as fixtures;
a helper function is handed out by a fixture that returns it."""

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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
def make_checkpoint():
    """``make_checkpoint(path, model_name, categories)``: an untrained tiny checkpoint (seed 0) at ``path``."""
    return _tiny_checkpoint


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


def _load_benchmark(name: str):
    """The module of ``benchmarks/NAME.py`` (benchmarks are scripts, not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark(NAME)``: the module of ``benchmarks/NAME.py``."""
    return _load_benchmark


# --------------------------------------------------------------------------- one tiny model per family

SMALL = {"min_size": 64, "max_size": 96}
#: family -> (det_al model name, options): untrained, 64-96 px inputs, score thresholds 0 so there are detections
FAMILY_MODELS = {
    "rcnn": ("fasterrcnn_mobilenet_v3_large_fpn", {**SMALL, "box_score_thresh": 0.0}),
    "mask": ("maskrcnn_tiny", {**SMALL, "box_score_thresh": 0.0, "box_detections_per_img": 20}),
    "retinanet": ("retinanet_resnet50_fpn", {**SMALL, "score_thresh": 0.0, "detections_per_img": 60}),
    "fcos": ("fcos_resnet50_fpn", {**SMALL, "score_thresh": 0.0, "detections_per_img": 60}),
    "ssd": ("tiny_ssd", {"score_thresh": 0.0, "detections_per_img": 60}),
}
_family_models: dict[str, torch.nn.Module] = {}


def _tiny_ssd(num_classes: int, **options) -> torch.nn.Module:
    """torchvision's SSD class over det_al's tiny backbone at 96 px.

    ssd300_vgg16 costs ~8 s per forward here, and ssdlite320 with random weights has vanishing
    (~1e-14) features, so every score is exactly 1/C and dropout changes nothing.
    """
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD, SSDHead

    from det_al.models.build import TinyBackbone

    anchors = DefaultBoxGenerator([[2], [2, 3]])
    head = SSDHead([128, 128], anchors.num_anchors_per_location(), num_classes)
    return SSD(TinyBackbone(), anchors, (96, 96), num_classes, head=head, **options).eval()


def _model_for(family: str) -> torch.nn.Module:
    """The tiny untrained model of ``family`` (4 classes), built once per session."""
    from det_al.config import ModelConfig
    from det_al.models.build import build_model

    if family not in _family_models:
        name, options = FAMILY_MODELS[family]
        torch.manual_seed(0)
        if name == "tiny_ssd":
            _family_models[family] = _tiny_ssd(4, **options)
        else:
            _family_models[family] = build_model(ModelConfig(name, 4, options))
    return _family_models[family]


def _image(h: int = 64, w: int = 80, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=list(FAMILY_MODELS))
def family(request) -> str:
    """Each detector family in turn: rcnn, mask, retinanet, fcos, ssd."""
    return request.param


@pytest.fixture(scope="session")
def model_for():
    """``model_for(family)``: that family's tiny untrained model (shared: do not train it)."""
    return _model_for


@pytest.fixture(scope="session")
def image():
    """``image(h, w, seed)``: a seeded random ``[3, h, w]`` image in [0, 1)."""
    return _image


# --------------------------------------------------------------------------- a hand-written scored pool


class HandScores:
    """A hand-written ``det-al score`` output: three small images (one in a sub-folder), four
    pseudo-labels (one with an L-shaped mask on image b), a ranking. The selection, Label Studio
    and CVAT tests compare what comes back with these values."""

    categories = [{"id": 3, "name": "cat", "supercategory": ""}, {"id": 7, "name": "dog", "supercategory": ""}]
    #: id -> (file_name, width, height)
    images = {10: ("a.png", 40, 30), 11: ("b.png", 50, 40), 12: ("sub/c.png", 32, 32)}
    ranking = [
        {"image_id": 11, "file_name": "b.png", "rank": 1, "informativeness": 0.9, "class": 0.5, "box": 0.4,
         "mask": 0.3, "presence": 0.2, "n_objects": 2, "certain": False, "empty": False},
        {"image_id": 10, "file_name": "a.png", "rank": 2, "informativeness": 0.5, "class": 0.3, "box": 0.2,
         "mask": 0.0, "presence": 0.1, "n_objects": 1, "certain": False, "empty": False},
        {"image_id": 12, "file_name": "sub/c.png", "rank": 3, "informativeness": 0.2, "class": 0.1, "box": 0.1,
         "mask": 0.0, "presence": 0.0, "n_objects": 1, "certain": True, "empty": False},
    ]

    @staticmethod
    def mask_b() -> np.ndarray:
        """The mask of annotation 3 on image b (50x40): an L shape, rows 5..14, columns 10..29."""
        mask = np.zeros((40, 50), bool)
        mask[5:15, 10:30] = True
        mask[10:15, 20:30] = False  # the notch: rows 10..14, columns 20..29 removed
        return mask

    def pseudo_labels(self) -> dict:
        from pycocotools import mask as mask_utils

        rle = mask_utils.encode(np.asfortranarray(self.mask_b().astype(np.uint8)))
        mask = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        images = [{"id": i, "file_name": f, "width": w, "height": h} for i, (f, w, h) in self.images.items()]
        extra = {"uncertainty": 0.3, "entropy": 0.2, "presence": 0.9}
        annotations = [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [2.5, 3.25, 10.0, 8.0], "area": 80.0, "iscrowd": 0,
             "score": 0.9, **extra},
            {"id": 2, "image_id": 11, "category_id": 7, "bbox": [0.0, 0.0, 50.0, 40.0], "area": 2000.0, "iscrowd": 0,
             "score": 0.6, **extra},
            {"id": 3, "image_id": 11, "category_id": 3, "bbox": [10.0, 5.0, 20.0, 10.0], "area": 150.0, "iscrowd": 0,
             "score": 0.75, "segmentation": mask, **extra},
            {"id": 4, "image_id": 12, "category_id": 7, "bbox": [30.0, 0.0, 2.0, 2.0], "area": 4.0, "iscrowd": 0,
             "score": 0.5, **extra},
        ]
        return {"images": images, "categories": self.categories, "annotations": annotations}

    def select(self, budget: int = 3) -> dict:
        """``select_batch`` of the ranking: the top ``budget`` images with their pseudo-labels."""
        from det_al.selection.files import select_batch

        return select_batch(self.ranking, self.pseudo_labels(), budget)

    def write(self, root: Path) -> dict[str, Path]:
        """The three images as PNGs under ``root/images`` and the score output folder.

        Returns paths: images (the image root), score (folder), ranking, pseudo_labels, pool.
        """
        import cv2

        images = root / "images"
        rng = np.random.default_rng(0)
        for file_name, width, height in self.images.values():
            (images / file_name).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(images / file_name), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        score = root / "score"
        score.mkdir(parents=True, exist_ok=True)
        (score / "ranking.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.ranking))
        (score / "pseudo_labels.json").write_text(json.dumps(self.pseudo_labels()))
        pool = {"images": self.pseudo_labels()["images"], "categories": self.categories, "annotations": []}
        (root / "pool.json").write_text(json.dumps(pool))
        return {"images": images, "score": score, "ranking": score / "ranking.jsonl",
                "pseudo_labels": score / "pseudo_labels.json", "pool": root / "pool.json"}


@pytest.fixture(scope="session")
def hand_scores() -> HandScores:
    """The hand-written scored pool (:class:`HandScores`)."""
    return HandScores()


# --------------------------------------------------------------------------- headless Chromium

CHROMIUM = next((p for p in (os.environ.get("DET_AL_CHROMIUM"), shutil.which("chromium"),
                             "/usr/bin/chromium") if p and os.path.exists(p)), None)
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-default-apps", "--disable-extensions"]


def _require_browser():
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if CHROMIUM is None:
        if in_ci:
            pytest.fail("Chromium not found under CI: run .ci/setup_browser.sh")
        pytest.skip("no chromium found (install with .ci/setup_browser.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if in_ci:
            pytest.fail("playwright (Python) not installed under CI: run .ci/setup_browser.sh")
        pytest.skip("chromium found but the playwright Python package is not installed "
                    "(install with .ci/setup_browser.sh)")
    return sync_playwright


@contextmanager
def _launch_chromium():
    """Headless Debian Chromium under Playwright (no download), closed on exit. Skips when either
    is missing, fails instead under CI (CI=true)."""
    sync_playwright = _require_browser()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def headless_chromium():
    """``with headless_chromium() as browser:`` a Playwright browser; checked only when called."""
    return _launch_chromium


# --------------------------------------------------------------------------- Label Studio server

START_TIMEOUT_S = 420


def _annotation_tool(variable: str, default: str, what: str, names: str) -> Path:
    """The file ``$variable`` (default ``default``) of an annotation tool's venv; missing: the test
    skips, or fails under ``DET_AL_REQUIRE_ANNOTATION_TOOLS=1`` (CI)."""
    path = Path(os.environ.get(variable, default))
    if not path.is_file():
        reason = (f"{what} not installed: {path} not found (set {variable} to {names}; "
                  ".ci/setup_annotation_tools.sh installs one)")
        if os.environ.get("DET_AL_REQUIRE_ANNOTATION_TOOLS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def annotation_tool():
    """``annotation_tool(variable, default, what, names)``: see :func:`_annotation_tool`."""
    return _annotation_tool


def _label_studio_executable() -> Path:
    return _annotation_tool("DET_AL_LABEL_STUDIO", "/tmp/ls-venv/bin/label-studio", "Label Studio server",
                            "the label-studio executable")


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
