"""The whole Label Studio round trip against a real Label Studio server on 127.0.0.1.

det-al select -> det-al export label-studio -> project + local storage + task import through the
REST API -> annotations made from the predictions (one box edited, one deleted, one added, one
task cancelled) -> JSON export -> det-al import label-studio -> det-al merge -> checks.

The server is the ``label_studio`` fixture of conftest.py (label-studio in its own virtual
environment, ``DET_AL_LABEL_STUDIO``), driven with plain HTTP (urllib) so the test environment
needs no label-studio-sdk; the SDK's ``LabelInterface`` validation and brush encoder run with the
server's own Python. Without the server the tests skip, unless
``DET_AL_REQUIRE_ANNOTATION_TOOLS=1`` (CI), where they fail.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from det_al.cli import main
from det_al.annotation.label_studio_import import brush_rle_to_mask

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


def test_brush_decoder_matches_label_studio_sdk(hand_scores, label_studio):
    mask = hand_scores.mask_b()
    rle = label_studio.sdk(BRUSH, mask.astype(int).tolist())
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


def test_round_trip_through_label_studio(hand_scores, label_studio, tmp_path, capsys):
    server = label_studio
    paths = hand_scores.write(server.documents)
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
    errors = server.sdk(VALIDATE, {"config": config, "predictions": [t["predictions"][0] for t in tasks] + [bad]})
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


def test_uncertainty_sampling_serves_the_most_informative_first(hand_scores, label_studio, tmp_path):
    paths = hand_scores.write(tmp_path)
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
    assert hand_scores.categories[0]["name"] in config


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


def test_readme_sdk_commands(hand_scores, label_studio, tmp_path, capsys):
    """The label-studio-sdk calls the README shows, run with the SDK that comes with the server."""
    paths = hand_scores.write(label_studio.documents / "readme")
    assert main(["select", "--ranking", str(paths["ranking"]), "--budget", "2", "--out", str(tmp_path / "sel")]) == 0
    assert main(["export", "label-studio", "--selection", str(tmp_path / "sel" / "selection.json"),
                 "--out", str(tmp_path / "ls"), "--image-root", str(paths["images"]),
                 "--local-files-root", str(label_studio.documents)]) == 0
    label_studio.sdk(README_SDK, {
        "url": label_studio.url, "token": label_studio.token, "config": str(tmp_path / "ls" / "labeling_config.xml"),
        "images": str(paths["images"]), "tasks": str(tmp_path / "ls" / "tasks.json"),
        "export": str(tmp_path / "export.json")})
    capsys.readouterr()
    assert main(["import", "label-studio", str(tmp_path / "export.json"), "--selection",
                 str(tmp_path / "sel" / "selection.json"), "--out", str(tmp_path / "labels")]) == 0
    assert "imported 2 annotations on 1 of 2 images; skipped 1 no annotation" in capsys.readouterr().out
