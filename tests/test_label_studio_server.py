"""The whole Label Studio round trip against a real Label Studio server on 127.0.0.1.

det-al select -> det-al export label-studio -> project + local storage + task import through the
REST API -> annotations made from the predictions (one box edited, one deleted, one added, one
task cancelled) -> JSON export -> det-al import label-studio -> det-al merge -> checks.

The server is label-studio in its own virtual environment (it pins its own Django and numpy):
``DET_AL_LABEL_STUDIO`` names its ``label-studio`` executable (default
``/tmp/ls-venv/bin/label-studio``; ``.ci/setup_annotation_tools.sh`` installs it). The server
is driven with plain HTTP (urllib) so the test environment needs no label-studio-sdk; the
SDK's ``LabelInterface`` validation and brush encoder run with the server's own Python.
Without the server the tests skip, unless ``DET_AL_REQUIRE_ANNOTATION_TOOLS=1`` (CI), where
they fail.
"""

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

import numpy as np
import pytest
from test_selection import CATEGORIES, mask_b, write_score_outputs

from det_al.cli import main
from det_al.annotation.label_studio import brush_rle_to_mask

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


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    exe = _label_studio_executable()
    root = tmp_path_factory.mktemp("label_studio")
    data, documents = root / "data", root / "documents"
    template = Path(os.environ.get("DET_AL_LABEL_STUDIO_TEMPLATE", exe.parent.parent / "det_al-data-template"))
    if (template / "label_studio.sqlite3").is_file():  # a migrated database: saves a minute or two
        shutil.copytree(template, data)
    documents.mkdir()
    port, token = _free_port(), secrets.token_hex(20)
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_USERNAME": "det-al-test@example.com",
        "LABEL_STUDIO_PASSWORD": secrets.token_hex(12),
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
        yield Server(url, token, documents, exe.parent / "python")
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _sdk(server: Server, code: str, payload) -> object:
    """Run ``code`` with the server's Python (label-studio-sdk there); it reads ``payload`` from
    stdin as JSON and prints its answer as JSON."""
    done = subprocess.run([str(server.python), "-c", code], input=json.dumps(payload), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


VALIDATE = """
import json, sys
from label_studio_sdk.label_interface import LabelInterface
payload = json.load(sys.stdin)
interface = LabelInterface(payload["config"])
print(json.dumps([interface.validate_prediction(p, return_errors=True) or [] for p in payload["predictions"]]))
"""

BRUSH = """
import json, sys
import numpy as np
from label_studio_sdk.converter.brush import mask2rle
mask = np.array(json.load(sys.stdin), dtype=np.uint8) * 255
print(json.dumps(mask2rle(mask)))
"""


def test_brush_decoder_matches_label_studio_sdk(label_studio):
    mask = mask_b()
    rle = _sdk(label_studio, BRUSH, mask.astype(int).tolist())
    assert np.array_equal(brush_rle_to_mask(rle, 50, 40), mask)


def _annotate(task: dict) -> tuple[dict, list[dict]]:
    """What the annotator does to each task's prediction (keyed by det_al image id)."""
    result = json.loads(json.dumps(task["predictions"][0]["result"]))
    image_id = task["data"]["image_id"]
    if image_id == 11:  # image b: edit the dog box, keep the cat polygon
        box = next(r for r in result if r["id"] == "det2")
        box["value"].update(x=10.0, y=20.0, width=30.0, height=40.0)
        return {"result": result, "was_cancelled": False}, result
    if image_id == 10:  # image a: delete the cat box, add a dog box
        added = {"id": "new1", "type": "rectanglelabels", "from_name": "bbox", "to_name": "image",
                 "original_width": 40, "original_height": 30, "image_rotation": 0,
                 "value": {"x": 50.0, "y": 50.0, "width": 25.0, "height": 25.0, "rotation": 0,
                           "rectanglelabels": ["dog"]}}
        return {"result": [added], "was_cancelled": False}, [added]
    return {"result": [], "was_cancelled": True}, []  # image c: skipped by the annotator


def test_round_trip_through_label_studio(label_studio, tmp_path, capsys):
    server = label_studio
    paths = write_score_outputs(server.documents)
    work = tmp_path
    assert main(["select", "--ranking", str(paths["ranking"]), "--budget", "3", "--out", str(work / "sel")]) == 0
    selection_path = work / "sel" / "selection.json"
    assert main(["export", "label-studio", "--selection", str(selection_path), "--out", str(work / "ls"),
                 "--image-root", str(paths["images"]), "--local-files-root", str(server.documents),
                 "--model-version", "det_al-test"]) == 0
    tasks = json.loads((work / "ls" / "tasks.json").read_text())
    config = (work / "ls" / "labeling_config.xml").read_text()

    # Label Studio's own validator accepts every prediction (and does catch a bad one)
    bad = json.loads(json.dumps(tasks[0]["predictions"][0]))
    bad["result"][0]["value"]["rectanglelabels"] = ["cow"]
    errors = _sdk(server, VALIDATE, {"config": config, "predictions": [t["predictions"][0] for t in tasks] + [bad]})
    assert errors[:-1] == [[]] * len(tasks) and errors[-1]

    project = server.call("POST", "/api/projects", {"title": "det_al round trip", "label_config": config})
    server.call("POST", "/api/storages/localfiles", {
        "project": project["id"], "path": str(paths["images"]), "title": "pool", "use_blob_urls": False})
    imported = server.call("POST", f"/api/projects/{project['id']}/import", tasks)
    assert (imported["task_count"], imported["prediction_count"]) == (3, 3)
    assert server.call("GET", f"/api/projects/{project['id']}")["model_version"] == "det_al-test"
    # the local-files URL of the most informative image serves its bytes
    served = server.call("GET", tasks[0]["data"]["image"], raw=True)
    assert served == (paths["images"] / "b.png").read_bytes()

    listed = server.call("GET", f"/api/tasks?project={project['id']}&fields=all&page_size=100")["tasks"]
    assert [t["data"]["image_id"] for t in sorted(listed, key=lambda t: t["inner_id"])] == [11, 10, 12]
    for task in listed:
        assert len(task["predictions"]) == 1
        body, _ = _annotate(task)
        server.call("POST", f"/api/tasks/{task['id']}/annotations/", body)

    export = server.call("GET", f"/api/projects/{project['id']}/export?exportType=JSON&download_all_tasks=true")
    (work / "export.json").write_text(json.dumps(export))
    capsys.readouterr()
    assert main(["import", "label-studio", str(work / "export.json"), "--selection", str(selection_path),
                 "--out", str(work / "labels")]) == 0
    assert "imported 3 annotations on 2 of 3 images; skipped 1 cancelled" in capsys.readouterr().out

    # a training set with other category ids (matched by name) and an image id the pool also uses
    train = {"images": [{"id": 11, "file_name": "old.png", "width": 20, "height": 20}],
             "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}],
             "annotations": [{"id": 5, "image_id": 11, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25,
                              "iscrowd": 0}]}
    (work / "train.json").write_text(json.dumps(train))
    assert main(["merge", "--train", str(work / "train.json"), "--labels", str(work / "labels" / "labels.json"),
                 "--pool", str(paths["pool"]), "--out", str(work / "merged")]) == 0
    merged = json.loads((work / "merged" / "train.json").read_text())
    pool = json.loads((work / "merged" / "pool.json").read_text())

    assert [im["file_name"] for im in merged["images"]] == ["old.png", "b.png", "a.png"]
    assert [im["id"] for im in merged["images"]] == [11, 13, 10]  # b's id 11 was taken, 12 is c's
    assert [im["file_name"] for im in pool["images"]] == ["sub/c.png"]
    assert merged["categories"] == train["categories"]
    ids = [a["id"] for a in merged["annotations"]]
    assert len(ids) == len(set(ids)) == 4
    new = {(a["image_id"], a["category_id"]): a for a in merged["annotations"][1:]}
    assert set(new) == {(13, 1), (13, 2), (10, 1)}
    assert new[(13, 1)]["bbox"] == pytest.approx([5.0, 8.0, 15.0, 16.0], abs=0.01)  # edited: 10,20,30,40 %
    assert new[(10, 1)]["bbox"] == pytest.approx([20.0, 15.0, 10.0, 7.5], abs=0.01)  # added: 50,50,25,25 %
    polygon = [v for x, y in [[10, 5], [10, 14], [19, 14], [19, 10], [20, 9], [29, 9], [29, 5]] for v in (x, y)]
    assert np.allclose(new[(13, 2)]["segmentation"][0], polygon, atol=0.01)  # kept: traced from the mask
    assert all(a["category_id"] in {1, 2} for a in merged["annotations"])
    assert merged["annotations"][0] == train["annotations"][0]


def test_uncertainty_sampling_serves_the_most_informative_first(label_studio, tmp_path):
    paths = write_score_outputs(tmp_path)
    assert main(["select", "--ranking", str(paths["ranking"]), "--budget", "3", "--out", str(tmp_path / "sel")]) == 0
    assert main(["export", "label-studio", "--selection", str(tmp_path / "sel" / "selection.json"),
                 "--out", str(tmp_path / "ls"), "--url-prefix", "http://127.0.0.1:9/images"]) == 0
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    config = (tmp_path / "ls" / "labeling_config.xml").read_text()
    project = label_studio.call("POST", "/api/projects", {
        "title": "det_al sampling", "label_config": config, "sampling": "Uncertainty sampling"})
    label_studio.call("POST", f"/api/projects/{project['id']}/import", tasks[::-1])  # least informative first
    served = label_studio.call("GET", f"/api/projects/{project['id']}/next")
    assert served["data"]["image_id"] == 11 and served["data"]["rank"] == 1
    assert CATEGORIES[0]["name"] in config


README_SDK = """
import json, os, sys
from label_studio_sdk import LabelStudio

job = json.load(sys.stdin)
ls = LabelStudio(base_url=job["url"], api_key=job["token"])
project = ls.projects.create(title="det_al round 1", label_config=open(job["config"]).read())
ls.import_storage.local.create(project=project.id, path=job["images"], title="pool")
ls.projects.import_tasks(id=project.id, request=json.load(open(job["tasks"])))
task = ls.tasks.list(project=project.id).items[0]
ls.annotations.create(id=task.id, result=task.predictions[0].result)
with open(job["export"], "wb") as f:
    for chunk in ls.projects.exports.download_sync(project.id, export_type="JSON", download_all_tasks=True):
        f.write(chunk)
print(json.dumps(project.id))
"""


def test_readme_sdk_commands(label_studio, tmp_path, capsys):
    """The label-studio-sdk calls the README shows, run with the SDK that comes with the server."""
    paths = write_score_outputs(label_studio.documents / "readme")
    assert main(["select", "--ranking", str(paths["ranking"]), "--budget", "2", "--out", str(tmp_path / "sel")]) == 0
    assert main(["export", "label-studio", "--selection", str(tmp_path / "sel" / "selection.json"),
                 "--out", str(tmp_path / "ls"), "--image-root", str(paths["images"]),
                 "--local-files-root", str(label_studio.documents)]) == 0
    _sdk(label_studio, README_SDK, {
        "url": label_studio.url, "token": label_studio.token, "config": str(tmp_path / "ls" / "labeling_config.xml"),
        "images": str(paths["images"]), "tasks": str(tmp_path / "ls" / "tasks.json"),
        "export": str(tmp_path / "export.json")})
    capsys.readouterr()
    assert main(["import", "label-studio", str(tmp_path / "export.json"), "--selection",
                 str(tmp_path / "sel" / "selection.json"), "--out", str(tmp_path / "labels")]) == 0
    assert "imported 2 annotations on 1 of 2 images; skipped 1 no annotation" in capsys.readouterr().out
