"""``det-al serve`` connected to a real Label Studio server as its ML backend, end to end.

A project with det_al's labeling config and "Uncertainty sampling", tasks whose images are
Label Studio local files (six images, a ``det-al score`` folder for five of them, and one task
whose file is missing); ``det-al serve`` runs as its own process and is connected through Label
Studio's API. Checked: one prediction per readable task with the backend's model version and
none for the missing image, regions Label Studio's own validator accepts and that stay inside
the image, the task order by prediction score equals det_al's ranking, the label stream serves
det_al's top image first, an annotation posted through the API reaches the journal within the
webhook's 1 s, and a second "Retrieve predictions" asks the backend only for the task without
prediction. Then a new model version (restart with Basic auth, PATCH of the backend): every
task is asked again, the queue follows, and webhook events reach the journal with the
credentials given to the webhook.

The server is the ``label_studio`` fixture (conftest.py): skipped without it unless
``DET_AL_REQUIRE_ANNOTATION_TOOLS=1``. With ``DET_AL_SERVE_SCREENSHOT=PATH`` (and Chromium, see
``.ci/setup_browser.sh``) it also saves a screenshot of the labelling view to PATH; the one in
docs/ was taken with a trained checkpoint, ``DET_AL_SERVE_CHECKPOINT=demo_out/model/best.pt``
(``det-al demo``), whose regions below confidence 0.5 are not sent.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from det_al.annotation.label_studio import labeling_config, local_files_url
from det_al.cli import main

MODEL_VERSION = "det_al-e2e"

VALIDATE = """
import json, sys
from label_studio_sdk.label_interface import LabelInterface
payload = json.load(sys.stdin)
interface = LabelInterface(payload["config"])
print(json.dumps([interface.validate_prediction(p, return_errors=True) or [] for p in payload["predictions"]]))
"""

CONNECT = """
import json, sys
from label_studio_sdk import LabelStudio
job = json.load(sys.stdin)
ls = LabelStudio(base_url=job["url"], api_key=job["token"])
ml = ls.ml.create(url=job["backend"], project=job["project"], title=job["version"])
ls.actions.create(id="retrieve_tasks_predictions", project=job["project"], selected_items={"all": True, "excluded": []})
print(json.dumps(ml.id))
"""


def _start_backend(args: list[str], log: Path, port: int = 0, auth: str | None = None) -> tuple[subprocess.Popen, str]:
    """``det-al serve ARGS --port PORT`` as a process (``auth``: ``USER:PASSWORD`` for Basic auth);
    returns it and its URL (from its first line)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    if auth:
        env["DET_AL_SERVE_BASIC_AUTH"] = auth
    process = subprocess.Popen([sys.executable, "-m", "det_al", "serve", *args, "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True, start_new_session=True)
    line = process.stdout.readline()  # printed once the model is loaded and the socket listens
    if " on http://" not in line:
        process.kill()
        pytest.fail(f"det-al serve did not start: {line!r}\n{log.read_text()[-3000:]}")
    return process, line.split(" on ", 1)[1].split()[0]


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except ProcessLookupError:
        pass


def _get(url: str, auth: str | None = None) -> dict:
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
        return json.loads(response.read())


def _tasks_by_score(server, project: int) -> list[dict]:
    query = urllib.parse.quote(json.dumps({"ordering": ["tasks:predictions_score"]}))
    return server.call("GET", f"/api/tasks?project={project}&fields=all&page_size=100&query={query}")["tasks"]


def _scored_project(server, tiny_pool, checkpoint, tmp_path: Path) -> SimpleNamespace:
    """The tiny pool under Label Studio's document root, scored without one image (scored on
    demand later), and a project of its 6 images plus one missing image, served from local files."""
    images = server.documents / "serve_pool"
    shutil.copytree(tiny_pool["root"] / "images", images / "images")
    coco = tiny_pool["coco"]
    on_demand = coco["images"][3]  # not in the scores folder: scored when Label Studio asks
    scored_pool = dict(coco, images=[im for im in coco["images"] if im is not on_demand])
    (tmp_path / "pool.json").write_text(json.dumps(scored_pool))
    assert main(["score", "--checkpoint", str(checkpoint), "--pool", str(tmp_path / "pool.json"),
                 "--image-root", str(images), "--out", str(tmp_path / "scores"), "--passes", "2", "--seed", "0",
                 "--no-progress"]) == 0
    ranking = [json.loads(line) for line in (tmp_path / "scores" / "ranking.jsonl").read_text().splitlines()]

    config = labeling_config(coco["categories"], polygons=True)
    project = server.call("POST", "/api/projects", {
        "title": "det_al serve", "label_config": config, "sampling": "Uncertainty sampling"})["id"]
    server.call("POST", "/api/storages/localfiles", {
        "project": project, "path": str(images), "title": "pool", "use_blob_urls": False})
    tasks = [{"data": {"image": local_files_url(images / im["file_name"], server.documents)}}
             for im in coco["images"]]
    tasks.append({"data": {"image": local_files_url(images / "images" / "missing.png", server.documents)}})
    server.call("POST", f"/api/projects/{project}/import", tasks)
    return SimpleNamespace(images=images, coco=coco, on_demand=on_demand, ranking=ranking, config=config,
                           project=project, tasks=tasks)


def _check_predictions(server, run: SimpleNamespace) -> tuple[list[dict], list[dict], list[str]]:
    """After the first "Retrieve predictions": the 6 readable tasks have one valid prediction
    each, in det_al's ranking order by prediction score; the missing image's task has none.
    Returns the listed tasks (by score), their predictions and their file names."""
    listed = _tasks_by_score(server, run.project)
    assert len(listed) == 7 and listed[-1]["data"]["image"] == run.tasks[-1]["data"]["image"]
    assert listed[-1]["predictions"] == [] and listed[-1]["predictions_score"] is None  # sorts last: no score
    listed = listed[:-1]
    for task in listed:
        assert [p["model_version"] for p in task["predictions"]] == [MODEL_VERSION]
    predictions = [t["predictions"][0] for t in listed]
    errors = server.sdk(VALIDATE, {"config": run.config, "predictions": predictions})
    assert errors == [[]] * 6
    regions = [r for p in predictions for r in p["result"]]
    # a Mask R-CNN: masks as polygons (a box where the mask is empty), all inside the image
    assert "polygonlabels" in {r["type"] for r in regions} <= {"polygonlabels", "rectanglelabels"}
    for r in regions:
        if r["type"] == "polygonlabels":
            assert all(0.0 <= v <= 100.0 for point in r["value"]["points"] for v in point)
        else:
            v = r["value"]
            assert min(v["x"], v["y"]) >= 0 and v["x"] + v["width"] <= 100 and v["y"] + v["height"] <= 100

    # the order by prediction score is det_al's ranking; the on-demand image sits where its score puts it
    name_of = {local_files_url(run.images / im["file_name"], server.documents): im["file_name"]
               for im in run.coco["images"]}
    order = [name_of[t["data"]["image"]] for t in listed]
    assert [name for name in order if name != run.on_demand["file_name"]] == [r["file_name"] for r in run.ranking]
    scores = [t["predictions_score"] for t in listed]
    assert scores == sorted(scores) and len(set(scores)) == 6
    return listed, predictions, order


def _check_a_new_version_with_basic_auth(server, run: SimpleNamespace, ml: int, url: str, auth: str,
                                         journal: Path, annotation: dict) -> None:
    """A new model version (as after det-al retrain) behind Basic auth ``auth`` at ``url``: the
    backend's title and credentials PATCHed, the project follows, the next retrieve asks for every
    task again, and with the credentials in the webhook's header the next annotation is journalled."""
    with pytest.raises(urllib.error.HTTPError, match="401"):
        _get(url + "/health")
    version = _get(url + "/health", auth)["model_version"]
    assert version.startswith("det_al-") and version != MODEL_VERSION  # the checkpoint's hash by default
    user, password = auth.split(":")
    server.call("PATCH", f"/api/ml/{ml}", {"url": url, "project": run.project, "title": version,
                                           "auth_method": "BASIC_AUTH", "basic_auth_user": user,
                                           "basic_auth_pass": password})
    assert server.call("GET", f"/api/projects/{run.project}")["model_version"] == version
    server.call("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={run.project}",
                {"selectedItems": {"all": True, "excluded": []}})
    health = _get(url + "/health", auth)
    assert (health["tasks"], health["scored"], health["unreadable"]) == (7, 6, 1)
    relisted = _tasks_by_score(server, run.project)[:-1]
    assert all(version in [p["model_version"] for p in t["predictions"]] for t in relisted)
    open_tasks = [t["id"] for t in relisted if not t["annotations"]]  # the annotated one is done
    assert server.call("GET", f"/api/projects/{run.project}/next")["id"] == open_tasks[0]

    # Label Studio does not send the backend's credentials with webhook events: give the
    # webhook the header, and the next annotation is journalled again
    hook = next(h for h in server.call("GET", f"/api/webhooks/?project={run.project}") if h["url"] == url + "/webhook")
    server.call("PATCH", f"/api/webhooks/{hook['id']}/", {
        "headers": {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}})
    second = server.call("POST", f"/api/tasks/{open_tasks[0]}/annotations/", {"result": []})
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [x["annotation"]["id"] for x in lines] == [annotation["id"], second["id"]]


def test_serve_as_the_projects_ml_backend(label_studio, tiny_pool, tiny_checkpoint, headless_chromium, tmp_path):
    server = label_studio
    checkpoint = os.environ.get("DET_AL_SERVE_CHECKPOINT") or tiny_checkpoint
    min_score = ["--min-score", "0.5"] if os.environ.get("DET_AL_SERVE_CHECKPOINT") else []
    run = _scored_project(server, tiny_pool, checkpoint, tmp_path)
    journal = tmp_path / "journal.jsonl"
    backend, url = _start_backend(
        ["--checkpoint", str(checkpoint), *min_score, "--local-files-root", str(server.documents), "--image-root",
         str(run.images), "--scores", str(tmp_path / "scores"), "--passes", "2", "--seed", "0", "--model-version",
         MODEL_VERSION, "--journal", str(journal)], tmp_path / "serve.log")
    try:
        assert _get(url + "/health")["model_version"] == MODEL_VERSION
        # the README's two label-studio-sdk calls: connect the backend, retrieve predictions for every task
        started = time.monotonic()
        ml = server.sdk(CONNECT, {"url": server.url, "token": server.token, "project": run.project, "backend": url,
                                  "version": MODEL_VERSION})
        took = time.monotonic() - started
        assert server.call("GET", f"/api/projects/{run.project}")["model_version"] == MODEL_VERSION
        health = _get(url + "/health")
        assert (health["tasks"], health["from_scores"], health["scored"], health["unreadable"]) == (7, 5, 1, 1)
        listed, predictions, order = _check_predictions(server, run)
        served = server.call("GET", f"/api/projects/{run.project}/next")
        assert served["id"] == listed[0]["id"]
        if order[0] != run.on_demand["file_name"]:
            assert order[0] == run.ranking[0]["file_name"]

        if os.environ.get("DET_AL_SERVE_SCREENSHOT"):
            shown = next(t for t in listed if t["predictions"][0]["result"])  # the first with regions to show
            _screenshot(headless_chromium, server, run.project, shown["id"],
                        Path(os.environ["DET_AL_SERVE_SCREENSHOT"]))

        # an annotation posted through the API reaches the journal within the webhook's 1 s
        result = predictions[0]["result"][:1]
        before = time.monotonic()
        annotation = server.call("POST", f"/api/tasks/{listed[0]['id']}/annotations/", {"result": result})
        while time.monotonic() - before < 1.0 and not (journal.exists() and journal.read_text()):
            time.sleep(0.05)
        lines = [json.loads(line) for line in journal.read_text().splitlines()]
        assert [(x["action"], x["annotation"]["id"], x["task"]["id"]) for x in lines] == [
            ("ANNOTATION_CREATED", annotation["id"], listed[0]["id"])]

        # a second "Retrieve predictions" asks again for the task without prediction only
        server.call("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={run.project}",
                    {"selectedItems": {"all": True, "excluded": []}})
        health = _get(url + "/health")
        assert (health["tasks"], health["scored"], health["unreadable"]) == (8, 1, 2)
        assert sum(len(t["predictions"]) for t in _tasks_by_score(server, run.project)) == 6

        print(f"connect and retrieve predictions for 7 tasks: {took:.2f} s; backend {ml}")
        # restart on the same port (Label Studio made its webhook for that URL once), with Basic auth
        _stop(backend)
        auth = "ls-backend:" + os.urandom(6).hex()
        backend, url = _start_backend(
            ["--checkpoint", str(checkpoint), "--image-root", str(run.images), "--local-files-root",
             str(server.documents), "--passes", "2", "--seed", "0", "--journal", str(journal)],
            tmp_path / "serve2.log", port=int(url.rsplit(":", 1)[1]), auth=auth)
        _check_a_new_version_with_basic_auth(server, run, ml, url, auth, journal, annotation)
    finally:
        _stop(backend)


def _screenshot(headless_chromium, server, project: int, task_id: int, path: Path) -> None:
    """The project's labelling view of one task, with det_al's pre-annotations, in headless Chromium."""
    with headless_chromium() as browser:
        page = browser.new_context(viewport={"width": 1280, "height": 720}).new_page()
        page.goto(server.url + "/user/login", wait_until="load")
        page.fill("#email", server.user)
        page.fill("#password", server.password)
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        assert "/user/login" not in page.url, page.content()[:3000]
        # a tab ordered by prediction score, its list showing id, image and score
        columns = server.call("GET", f"/api/dm/columns?project={project}")["columns"]
        names = {"tasks:" + ("data." if c.get("parent") == "data" else "") + c["id"] for c in columns}
        hidden = sorted(names - {"tasks:id", "tasks:data.image", "tasks:predictions_score", "tasks:data"})
        view = server.call("POST", f"/api/dm/views?project={project}", {"project": project, "data": {
            "title": "by prediction score", "ordering": ["tasks:predictions_score"],
            "hiddenColumns": {"explore": hidden, "labeling": hidden}}})
        page.goto(f"{server.url}/projects/{project}/data?tab={view['id']}&task={task_id}", wait_until="networkidle")
        page.wait_for_timeout(3000)
        png = page.screenshot()
    import io

    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)  # a 128-colour palette keeps the docs' PNG small
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128).save(path, optimize=True)
