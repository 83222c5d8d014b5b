"""det-al serve without a Label Studio server: URL mapping, answers, endpoints, journal, guards.

The end-to-end test against the real server is in test_serve_label_studio.py.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

import det_al
from det_al.config import config_from_dict
from det_al.serve.app import make_app
from det_al.serve.journal import Journal, journal_tasks
from det_al.serve.paths import ImageRoots, TaskImageError
from det_al.serve.predict import Backend, LabelingConfig, detections_to_result, parse_labeling_config, task_score

# --------------------------------------------------------------------------- task URL -> file


@pytest.fixture()
def roots(tmp_path) -> ImageRoots:
    (tmp_path / "docs" / "pool" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "pool" / "sub" / "a b.png").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("no")
    os.symlink(tmp_path / "secret.txt", tmp_path / "docs" / "pool" / "link.txt")
    return ImageRoots.make(tmp_path / "docs" / "pool", tmp_path / "docs", "https://h/img")


@pytest.mark.parametrize("data, expected", [
    ({"image": "/data/local-files/?d=pool/sub/a%20b.png"}, "pool/sub/a b.png"),
    ({"image": "http://127.0.0.1:8080/data/local-files/?d=pool/sub/a%20b.png"}, "pool/sub/a b.png"),
    ({"image": "https://h/img/sub/a%20b.png"}, "pool/sub/a b.png"),
    ({"image": "https://elsewhere/x.png", "file_name": "sub/a b.png"}, "pool/sub/a b.png"),
    ({"image": "sub/a b.png"}, "pool/sub/a b.png"),
])
def test_task_image_maps_urls_back_to_files(roots, data, expected):
    assert roots.task_image(data) == roots.local_files_root / expected


@pytest.mark.parametrize("data, message", [
    ({"image": "/data/local-files/?d=../secret.txt"}, "leaves the root"),
    ({"image": "/data/local-files/?d=%2Fetc%2Fpasswd"}, "absolute path"),
    ({"image": "/data/local-files/?d="}, "empty"),
    ({"image": "https://h/img/../../secret.txt"}, "leaves the root"),
    ({"image": "https://h/img/link.txt"}, "leaves the root"),  # a symbolic link leading out
    ({"image": "https://elsewhere/x.png", "file_name": "../../secret.txt"}, "leaves the root"),
    ({"image": "/data/upload/1/x.png"}, "cannot map"),
    ({"image": "file:///etc/passwd"}, "cannot map"),
    ({"photo": "sub/a b.png"}, "no image URL"),
])
def test_task_image_refuses_anything_outside_the_roots(roots, data, message):
    with pytest.raises(TaskImageError, match=message):
        roots.task_image(data)


def test_local_files_url_needs_the_local_files_root(tmp_path):
    with pytest.raises(TaskImageError, match="no --local-files-root"):
        ImageRoots.make(image_root=tmp_path).task_image({"image": "/data/local-files/?d=a.png"})
    with pytest.raises(det_al.InputError, match="--image-root or --local-files-root"):
        ImageRoots.make()
    with pytest.raises(det_al.InputError, match="not a folder"):
        ImageRoots.make(tmp_path / "missing")


# --------------------------------------------------------------------------- answers


def test_task_score_keeps_the_order_lowest_first():
    assert [task_score(v) for v in (1.0, 0.9, 0.25, 0.0)] == [0.0, 0.1, 0.75, 1.0]
    assert [task_score(v, bounded=False) for v in (3.0, 1.0, 0.0)] == [0.25, 0.5, 1.0]


def test_parse_labeling_config_reads_names_and_labels():
    config = parse_labeling_config(
        '<View><Image name="img" value="$photo"/><RectangleLabels name="r" toName="img"><Label value="cat"/>'
        '<Label value="dog"/></RectangleLabels><PolygonLabels name="p" toName="img"><Label value="cat"/>'
        '</PolygonLabels><RectangleLabels name="other" toName="elsewhere"/></View>')
    assert config == LabelingConfig("photo", "img", "r", frozenset({"cat", "dog"}), "p", frozenset({"cat"}))
    assert parse_labeling_config(None) == LabelingConfig()
    with pytest.raises(ValueError, match="no <Image>"):
        parse_labeling_config("<View/>")
    with pytest.raises(ValueError, match="not XML"):
        parse_labeling_config("<View>")


SQUARE = [[40.0, 10.0, 80.0, 10.0, 80.0, 50.0, 40.0, 50.0]]  # rasterised: pixels 40..79 x 10..49


def test_detections_to_result_in_percent_named_for_the_project():
    detections = [
        {"id": 1, "category_id": 1, "bbox": [10, 20, 30, 40], "score": 0.8},
        {"id": 2, "category_id": 2, "bbox": [40, 10, 40, 40], "score": 0.6, "segmentation": SQUARE},
        {"id": 3, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.9},  # "bird": not a label of the config
        {"id": 4, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.01},  # below min_score
    ]
    names = {1: "cat", 2: "dog", 3: "bird"}
    boxes_only = LabelingConfig("img", "img", "r", frozenset({"cat", "dog"}))
    result = detections_to_result(detections, 200, 100, names, boxes_only, min_score=0.05)
    assert [(r["id"], r["type"], r["from_name"], r["to_name"]) for r in result] == [
        ("det1", "rectanglelabels", "r", "img"), ("det2", "rectanglelabels", "r", "img")]
    value = result[0]["value"]
    assert value.pop("rectanglelabels") == ["cat"]
    assert value == pytest.approx({"x": 5.0, "y": 20.0, "width": 15.0, "height": 40.0, "rotation": 0})
    assert (result[0]["original_width"], result[0]["original_height"], result[0]["score"]) == (200, 100, 0.8)
    with_polygons = LabelingConfig("img", "img", "r", frozenset({"cat", "dog"}), "p", frozenset({"dog"}))
    result = detections_to_result(detections, 200, 100, names, with_polygons, min_score=0.05)
    assert [(r["type"], r["from_name"]) for r in result] == [("rectanglelabels", "r"), ("polygonlabels", "p")]
    xs = sorted({x for x, _ in result[1]["value"]["points"]})
    assert (xs[0], xs[-1]) == pytest.approx((20.0, 39.5))  # the mask covers pixels 40..79 of 200
    assert result[1]["value"]["polygonlabels"] == ["dog"]


def _fake_backend(records: list[dict], config: dict | None = None) -> Backend:
    """A backend without a model, holding ``records`` as scored images (for the placement maths)."""
    from det_al.api import LoadedModel
    from det_al.serve.predict import ScoredImage

    loaded = LoadedModel(None, config_from_dict(config or {}), [{"id": 1, "name": "cat"}])
    backend = Backend(loaded, ImageRoots(Path("/nonexistent")), "v1")
    for i, r in enumerate(records):
        backend.images[Path(f"/p/{i}.png")] = ScoredImage(dict(r), [], 10, 10)
    return backend


def test_an_image_scored_on_demand_is_ranked_among_the_known_ones():
    # default scoring: presence, least_confidence and rpn_gap fused by rank, k = 60
    known = [{"presence": 0.9, "least_confidence": 0.5, "rpn_gap": 0.1, "informativeness": 0.8, "empty": False},
             {"presence": 0.1, "least_confidence": 0.2, "rpn_gap": 0.3, "informativeness": 0.3, "empty": False}]
    backend = _fake_backend(known)
    new = {"presence": 0.5, "least_confidence": 0.6, "rpn_gap": 0.2, "informativeness": 1.0, "empty": False}
    backend._place({Path("/p/new.png"): _scored(new)})
    # ranks among the three: presence 2, least_confidence 1, rpn_gap 2 -> (61/62 + 61/61 + 61/62) / 3
    assert new["informativeness"] == pytest.approx((61 / 62 + 1 + 61 / 62) / 3)
    assert new["certain"] is False
    empty = {"presence": 0.0, "least_confidence": 0.0, "rpn_gap": 0.0, "informativeness": 1.0, "empty": True}
    backend._place({Path("/p/empty.png"): _scored(empty)})
    assert empty["informativeness"] == pytest.approx(0.55)  # the median of 0.8 and 0.3: the quantile policy


def _scored(record):
    from det_al.serve.predict import ScoredImage

    return ScoredImage(record, [], 10, 10)


# --------------------------------------------------------------------------- the app, with a real model


@pytest.fixture(scope="module")
def served(tiny_pool, tiny_checkpoint, tmp_path_factory):
    """The app over the tiny checkpoint; the first three pool images come from a scores folder."""
    out = tmp_path_factory.mktemp("serve")
    root = out / "pool"  # a copy: a test adds a broken image
    shutil.copytree(tiny_pool["root"], root)
    coco = dict(tiny_pool["coco"], images=tiny_pool["coco"]["images"][:3])
    model = det_al.load_model(tiny_checkpoint)
    scores = det_al.score_images(model, coco, image_root=root, out_dir=out / "scores", passes=2, seed=0,
                                 progress=False)
    backend = Backend(model, ImageRoots.make(root), "det_al-test", scores=scores, passes=2, seed=0)
    app = make_app(backend, out / "journal.jsonl", max_body=4096)
    return {"app": app, "backend": backend, "scores": scores, "journal": out / "journal.jsonl",
            "images": [im["file_name"] for im in tiny_pool["coco"]["images"]], "root": root}


def call(app, method: str, path: str, body=None, headers: dict | None = None, raw: bytes | None = None):
    """One request through the WSGI app: ``(status, JSON answer)``."""
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO(data),
               "CONTENT_LENGTH": str(len(data)) if (data or method == "POST") else ""}
    environ.update(headers or {})
    answer = {}

    def start_response(status, response_headers):
        answer["status"] = int(status.split()[0])
        answer["headers"] = dict(response_headers)

    chunks = app(environ, start_response)
    return answer["status"], json.loads(b"".join(chunks))


def task(i: int, image: str, **data) -> dict:
    return {"id": i, "data": {"image": image, **data}, "annotations": [], "predictions": []}


def test_health_and_setup_answer_the_model_version(served):
    status, answer = call(served["app"], "GET", "/health")
    assert status == 200 and answer["status"] == "UP" and answer["model_version"] == "det_al-test"
    assert call(served["app"], "POST", "/setup", {"project": "1.1700000000", "schema": "<View/>"}) == (
        200, {"model_version": "det_al-test"})


def test_predict_answers_scored_images_from_the_folder_in_task_order(served):
    backend, names = served["backend"], served["images"][:3]
    before = backend.counters.scored
    tasks = [task(7, names[2]), task(8, names[0]), task(9, names[1])]
    status, answer = call(served["app"], "POST", "/predict", {"tasks": tasks})
    assert status == 200 and len(answer["results"]) == 3
    assert backend.counters.scored == before  # no model run
    by_name = {s.file_name: s for s in served["scores"]}
    for entry, name in zip(answer["results"], [names[2], names[0], names[1]]):
        assert entry["model_version"] == "det_al-test"
        assert entry["score"] == pytest.approx(1.0 - by_name[name].informativeness, abs=1e-6)
        boxes = [r for r in entry["result"] if r["type"] == "rectanglelabels"]
        assert len(boxes) == len(by_name[name].detections)  # no config given: det_al's names, boxes only
        assert all(r["from_name"] == "bbox" and r["to_name"] == "image" for r in boxes)
        assert all(r["value"]["x"] + r["value"]["width"] <= 100.0 for r in boxes)


def test_predict_scores_other_images_on_demand_once(served):
    backend, name = served["backend"], served["images"][4]
    before = backend.counters.scored
    for _ in range(2):
        status, answer = call(served["app"], "POST", "/predict", {"tasks": [task(1, name)]})
        assert status == 200 and "result" in answer["results"][0]
        assert 0.0 <= answer["results"][0]["score"] <= 1.0
    assert backend.counters.scored == before + 1


def test_unreadable_or_refused_images_get_an_entry_without_result(served, tmp_path):
    (served["root"] / "broken.png").write_bytes(b"not an image")
    tasks = [task(1, "missing.png"), task(2, "../outside.png"), task(3, "broken.png"), task(4, served["images"][0]),
             {"id": 5}]
    status, answer = call(served["app"], "POST", "/predict", {"tasks": tasks})
    assert status == 200
    assert [("result" in e) for e in answer["results"]] == [False, False, False, True, False]
    assert all(e["model_version"] == "det_al-test" for e in answer["results"])


@pytest.mark.parametrize("method, path, body, raw, status, message", [
    ("POST", "/predict", None, b"{not json", 400, "not JSON"),
    ("POST", "/predict", None, b"[1, 2]", 400, "JSON object"),
    ("POST", "/predict", {"task": []}, None, 400, "'tasks'"),
    ("POST", "/predict", {"tasks": [], "label_config": "<View>"}, None, 400, "not XML"),
    ("POST", "/predict", None, b"x" * 5000, 413, "over the limit"),
    ("GET", "/predict", None, None, 405, "takes POST"),
    ("POST", "/../../etc/passwd", {}, None, 404, "no endpoint"),
    ("POST", "/webhook", None, b"", 400, "not JSON"),
])
def test_bad_requests_get_a_clear_status(served, method, path, body, raw, status, message):
    got, answer = call(served["app"], method, path, body, raw=raw)
    assert got == status and message in answer["error"]


def test_a_body_without_length_is_refused_before_reading():
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/setup", "wsgi.input": io.BytesIO(b"{}")}
    app = make_app(_fake_backend([]))
    statuses = []
    app(environ, lambda status, headers: statuses.append(status))
    assert statuses == ["411 Length Required"]


def test_webhook_answers_every_event_and_journals_annotations(served):
    app, journal = served["app"], served["journal"]
    lines_before = journal.read_text().count("\n") if journal.exists() else 0
    for action in ("PROJECT_UPDATED", "START_TRAINING", "SOMETHING_NEW"):
        status, answer = call(app, "POST", "/webhook", {"action": action, "project": {"id": 3}})
        assert status == 200 and answer["journalled"] is False
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 3},
             "annotation": {"id": 50, "task": 9, "result": []}, "task": {"id": 9, "data": {"image": "a.png"}}}
    status, answer = call(app, "POST", "/webhook", event)
    assert status == 200 and answer["journalled"] is True
    lines = journal.read_text().splitlines()[lines_before:]
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert (line["action"], line["project"], line["annotation"]["id"], line["task"]["data"]) == (
        "ANNOTATION_CREATED", 3, 50, {"image": "a.png"})


def test_basic_auth_when_configured():
    app = make_app(_fake_backend([]), auth=("ann", "s3cret:x"))
    assert call(app, "GET", "/health")[0] == 401
    wrong = {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"ann:nope").decode()}
    assert call(app, "GET", "/health", headers=wrong)[0] == 401
    assert call(app, "GET", "/health", headers={"HTTP_AUTHORIZATION": "Basic %%%"})[0] == 401
    right = {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"ann:s3cret:x").decode()}
    assert call(app, "GET", "/health", headers=right)[0] == 200


def test_requests_at_once_never_interleave_model_runs(monkeypatch, tmp_path):
    """Two annotators open unscored tasks at the same time: the model runs one after the other."""
    from det_al.api import LoadedModel

    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"x")
    spans = []

    def fake_score_images(model, paths, **kwargs):
        start = time.monotonic()
        time.sleep(0.2)
        spans.append((start, time.monotonic()))
        return det_al.Scores([], {"images": [], "categories": [], "annotations": []})

    monkeypatch.setattr(det_al, "score_images", fake_score_images)
    backend = Backend(LoadedModel(None, config_from_dict({}), []), ImageRoots.make(tmp_path), "v")
    threads = [threading.Thread(target=backend.predict, args=([task(1, name)],)) for name in ("a.png", "b.png")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans.sort()
    assert len(spans) == 2 and spans[0][1] <= spans[1][0]


# --------------------------------------------------------------------------- the journal


def test_journal_folds_events_into_export_tasks(tmp_path):
    journal = Journal(tmp_path / "j.jsonl")
    t1, t2 = {"id": 1, "data": {"image": "a.png"}}, {"id": 2, "data": {"image": "b.png"}}
    events = [
        {"action": "ANNOTATION_CREATED", "project": {"id": 5}, "annotation": {"id": 10, "task": 1, "result": ["v1"]}, "task": t1},
        {"action": "ANNOTATIONS_CREATED", "project": {"id": 5}, "annotation": [{"id": 11, "task": 2, "result": ["b"]},
                                                                             {"id": 12, "task": 1, "result": ["x"]}],
         "task": [t2, t1]},
        {"action": "ANNOTATION_UPDATED", "project": {"id": 5}, "annotation": {"id": 10, "task": 1, "result": ["v2"]}, "task": t1},
        {"action": "ANNOTATIONS_DELETED", "project": {"id": 5}, "annotations": [{"id": 12}]},
        {"action": "ANNOTATION_CREATED", "project": {"id": 6}, "annotation": {"id": 13, "task": 3, "result": []},
         "task": {"id": 3, "data": {}}},
        {"action": "TASKS_CREATED", "project": {"id": 5}},
    ]
    assert [journal.record(e) for e in events] == [True, True, True, True, True, False]
    with open(journal.path, "a") as f:
        f.write('{"action": "ANNOTATION_CRE')  # a write cut short by a crash
    tasks = journal_tasks(journal.path, project=5)
    assert [(t["id"], t["data"], [(a["id"], a["result"]) for a in t["annotations"]]) for t in tasks] == [
        (1, {"image": "a.png"}, [(10, ["v2"])]), (2, {"image": "b.png"}, [(11, ["b"])])]
    assert [t["id"] for t in journal_tasks(journal.path)] == [1, 2, 3]


# --------------------------------------------------------------------------- retraining from the journal


def _annotation_event(annotation_id: int, task_id: int, image: str, box: dict, label: str, size=(96, 96)) -> dict:
    region = {"id": f"r{annotation_id}", "type": "rectanglelabels", "from_name": "bbox", "to_name": "image",
              "original_width": size[0], "original_height": size[1], "image_rotation": 0,
              "value": {**box, "rotation": 0, "rectanglelabels": [label]}}
    return {"action": "ANNOTATION_CREATED", "project": {"id": 1},
            "annotation": {"id": annotation_id, "task": task_id, "result": [region], "was_cancelled": False},
            "task": {"id": task_id, "data": {"image": image}}}


def test_journal_to_coco_uses_the_pool_ids_and_pixels(tmp_path):
    from PIL import Image

    from det_al.serve.retrain import journal_to_coco

    (tmp_path / "docs" / "p").mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(tmp_path / "docs" / "p" / "a.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "docs" / "p" / "b.png")
    journal = Journal(tmp_path / "j.jsonl")
    journal.record(_annotation_event(1, 5, "/data/local-files/?d=p/a.png",
                                     {"x": 50.0, "y": 50.0, "width": 25.0, "height": 25.0}, "dog", (40, 30)))
    journal.record(_annotation_event(2, 6, "/data/local-files/?d=p/b.png",
                                     {"x": 0.0, "y": 0.0, "width": 50.0, "height": 10.0}, "cat", (40, 30)))
    roots = ImageRoots.make(tmp_path / "docs" / "p", tmp_path / "docs")
    pool = {"images": [{"id": 7, "file_name": "a.png", "width": 40, "height": 30}]}
    labels, report = journal_to_coco(journal.path, roots, [{"id": 1, "name": "cat"}, {"id": 4, "name": "dog"}], pool=pool)
    assert [(im["id"], im["file_name"], im["width"], im["height"]) for im in labels["images"]] == [
        (7, "a.png", 40, 30), (8, "b.png", 40, 30)]
    boxes = [(a["image_id"], a["category_id"], a["bbox"]) for a in labels["annotations"]]
    assert boxes == [(7, 4, [20.0, 15.0, 10.0, 7.5]), (8, 1, [0.0, 0.0, 20.0, 3.0])]
    journal.record(_annotation_event(3, 9, "/data/local-files/?d=../x.png", {"x": 0, "y": 0, "width": 1, "height": 1},
                                     "cat"))
    with pytest.raises(det_al.InputError, match="task 9: '../x.png' leaves the root"):
        journal_to_coco(journal.path, roots, [{"id": 1, "name": "cat"}])


def test_retrain_fine_tunes_rescoring_and_bumps_the_version(tiny_pool, tiny_checkpoint, tmp_path, capsys):
    from det_al.cli import main
    from det_al.serve.server import checkpoint_version

    root = tmp_path / "pool"
    shutil.copytree(tiny_pool["root"], root)
    names = [im["file_name"] for im in tiny_pool["coco"]["images"]]
    cats = [c["name"] for c in tiny_pool["coco"]["categories"]]
    journal = Journal(tmp_path / "journal.jsonl")
    journal.record(_annotation_event(1, 1, names[0], {"x": 10.0, "y": 10.0, "width": 30.0, "height": 30.0}, cats[0]))
    journal.record(_annotation_event(2, 2, names[4], {"x": 40.0, "y": 20.0, "width": 20.0, "height": 50.0}, cats[1]))
    out = tmp_path / "round1"
    argv = ["retrain", "--journal", str(journal.path), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
            "--image-root", str(root), "--pool", str(root / "pool.json"), "--set", "train.epochs=1",
            "--set", "train.batch_size=2", "--passes", "2", "--seed", "0", "--no-progress"]
    assert main(argv) == 0
    record = json.loads((out / "retrain.json").read_text())
    assert record["model_version"] == checkpoint_version(out / "model" / "last.pt") != checkpoint_version(tiny_checkpoint)
    assert (record["n_labelled"], record["n_annotations"]) == (2, 2)
    rescored = [json.loads(line)["file_name"] for line in (out / "scores" / "ranking.jsonl").read_text().splitlines()]
    assert sorted(rescored) == sorted(set(names) - {names[0], names[4]})
    assert f"new model version {record['model_version']}" in capsys.readouterr().out
    assert main(argv) == 2  # an earlier retrain in OUT is never overwritten
    assert "holds an earlier retrain" in capsys.readouterr().err


def test_cli_bad_input_is_one_line(tiny_checkpoint, tmp_path, capsys):
    import socket

    from det_al.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = [
            (["--image-root", str(tmp_path), "--port", str(port)], f"cannot listen on 127.0.0.1:{port}"),
            (["--image-root", str(tmp_path / "missing")], "--image-root: not a folder"),
            (["--image-root", str(tmp_path), "--scores", str(tmp_path / "none")], "none"),
            (["--image-root", str(tmp_path), "--passes", "0"], "--passes must be at least 1"),
        ]
        for args, message in cases:
            assert main(["serve", "--checkpoint", str(tiny_checkpoint), *args]) == 2
            err = capsys.readouterr().err
            assert err.startswith("det-al serve: error: ") and message in err and err.count("\n") == 1, err


def test_over_a_real_socket_with_the_threading_server(tiny_pool, tiny_checkpoint, tmp_path):
    import http.client
    from wsgiref.simple_server import make_server

    from det_al.serve.server import QuietHandler, ThreadingWSGIServer, make_backend_app

    app = make_backend_app(tiny_checkpoint, image_root=tiny_pool["root"], journal=tmp_path / "j.jsonl",
                           max_body=1000, model_version="v-socket")
    server = make_server("127.0.0.1", 0, app, server_class=ThreadingWSGIServer, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        def request(method, path, body=b"", headers=None):
            connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            answer = (response.status, json.loads(response.read()))
            connection.close()
            return answer

        assert request("GET", "/health")[1]["model_version"] == "v-socket"
        event = json.dumps({"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "task": 1}, "task": {"id": 1}})
        results = []
        threads = [threading.Thread(target=lambda: results.append(request("POST", "/webhook", event.encode())))
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [status for status, _ in results] == [200] * 8
        assert [json.loads(line)["annotation"]["id"] for line in (tmp_path / "j.jsonl").read_text().splitlines()] == [1] * 8
        status, answer = request("POST", "/predict", b"{}", {"Content-Length": "1000000"})
        assert status == 413
    finally:
        server.shutdown()
        server.server_close()


def test_a_detector_held_in_memory_is_served_from_python(tiny_pool):
    from det_al.models.build import fasterrcnn_tiny

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = fasterrcnn_tiny(num_classes=4, box_score_thresh=0.0)
    app = det_al.make_backend_app(model, categories=["circle", "square", "triangle"], image_root=tiny_pool["root"],
                                  passes=2, seed=0)
    version = app.backend.model_version
    assert version.startswith("det_al-") and len(version) == len("det_al-") + 12
    name = tiny_pool["coco"]["images"][0]["file_name"]
    status, answer = call(app, "POST", "/predict", {"tasks": [task(1, name)]})
    entry = answer["results"][0]
    assert status == 200 and entry["model_version"] == version and entry["result"]
    assert {r["value"]["rectanglelabels"][0] for r in entry["result"]} <= {"circle", "square", "triangle"}
    assert model.training  # the user's model is left in the mode it was in
