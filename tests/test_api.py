"""The public Python API (det_al.api): parity with the CLI, every kind of input, the user's model
left as it was, the README example, and a real torchvision model end to end."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import det_al
from det_al.cli import main
from det_al.errors import InputError
from det_al.data.synthetic import generate
from det_al.models.build import fasterrcnn_tiny

README = Path(__file__).resolve().parent.parent / "README.md"


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return fasterrcnn_tiny(num_classes=4, min_size=64, max_size=64, box_score_thresh=0.0).eval()


@pytest.fixture(scope="module")
def folder(tiny_pool, tmp_path_factory) -> Path:
    """Three of the tiny pool's images in a folder of their own (ids 1..3 in path order)."""
    root = tmp_path_factory.mktemp("three")
    for image in tiny_pool["coco"]["images"][2:5]:
        shutil.copy(tiny_pool["root"] / image["file_name"], root / Path(image["file_name"]).name)
    return root


def _files(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


def _pairs(scores) -> list[tuple[int, float]]:
    return [(s.image_id, s.informativeness) for s in scores]


def state(model: nn.Module) -> tuple:
    """Everything score_images must leave as it was: modes, hooks, devices, weights."""
    modes = tuple(m.training for m in model.modules())
    hooks = tuple((name, tuple(getattr(m, name))) for m in model.modules()
                  for name in ("_forward_pre_hooks", "_forward_hooks") if getattr(m, name))
    devices = tuple(str(t.device) for t in (*model.parameters(), *model.buffers()))
    weights = tuple(float(p.detach().double().sum()) for p in model.parameters())
    return modes, hooks, devices, weights


# --------------------------------------------------------------------------- parity


def test_api_and_cli_give_the_same_ranking_and_pseudo_labels(tiny_pool, tiny_checkpoint, tmp_path):
    model, config, categories = det_al.load_model(tiny_checkpoint)
    assert categories == tiny_pool["coco"]["categories"]
    coco = tiny_pool["coco"]
    pool = tmp_path / "pool.json"  # three of the six images (two old, one drifted), to keep it quick
    pool.write_text(json.dumps({**coco, "images": coco["images"][1:4]}))
    out = tmp_path / "cli"
    assert main(["score", "-k", str(tiny_checkpoint), "-p", str(pool), "-r", str(tiny_pool["root"]), "-o", str(out),
                 "--passes", "2", "--seed", "3", "--no-progress"]) == 0
    cli_ranking = [json.loads(line) for line in (out / "ranking.jsonl").read_text().splitlines()]
    cli_labels = json.loads((out / "pseudo_labels.json").read_text())

    # the in-memory model with no config (the checkpoint's sets only passes and dropout: the
    # defaults do the rest); the categories come from the COCO pool
    assert (config.passes.dropout, config.scoring) == (0.3, det_al.Config().scoring)
    scores = det_al.score_images(model, pool, image_root=tiny_pool["root"], passes=2, dropout=0.3, seed=3,
                                 progress=False)
    assert scores.ranking == cli_ranking
    assert json.loads(json.dumps(scores.pseudo_labels())) == cli_labels
    assert len(cli_labels["annotations"]) > 0
    ids = json.loads((out / "embeddings_ids.json").read_text())
    assert scores.embedding_ids == ids
    assert np.allclose(scores.embeddings, np.load(out / "embeddings.npy"), atol=1e-5)

    # the same through out_dir (score_to_dir, the files of det-al score) and back with Scores.load
    on_disk = det_al.score_images(model, pool, image_root=tiny_pool["root"], passes=2, seed=3, config=config,
                                  progress=False, out_dir=tmp_path / "api")
    assert on_disk.ranking == cli_ranking
    # load_model's result as it is: the checkpoint's config and categories, like det-al score
    loaded = det_al.score_images(det_al.load_model(tiny_checkpoint), pool, image_root=tiny_pool["root"], passes=2,
                                 seed=3, progress=False)
    assert loaded.ranking == cli_ranking
    assert (tmp_path / "api" / "pseudo_labels.json").read_text() == (out / "pseudo_labels.json").read_text()
    # save() writes files that det-al select reads like det-al score's
    scores.save(tmp_path / "saved")
    assert det_al.Scores.load(tmp_path / "saved").ranking == cli_ranking
    assert main(["select", "--ranking", str(tmp_path / "saved" / "ranking.jsonl"), "--budget", "2",
                 "--out", str(tmp_path / "sel")]) == 0
    assert json.loads((tmp_path / "sel" / "selection.json").read_text()) == det_al.select(scores, budget=2).coco


def test_out_dir_resumes_without_scoring_again(folder, tmp_path):
    model = tiny_model()
    calls = []
    model.backbone.register_forward_hook(lambda *a: calls.append(1))
    first = det_al.score_images(model, folder, passes=2, out_dir=tmp_path / "s", progress=False)
    assert len(calls) == 3 and (tmp_path / "s" / "pool.json").exists()  # a folder's pool is saved, as the CLI does
    with pytest.raises(InputError, match="--resume"):
        det_al.score_images(model, folder, passes=2, out_dir=tmp_path / "s", progress=False)
    again = det_al.score_images(model, folder, passes=2, out_dir=tmp_path / "s", resume=True, progress=False)
    assert len(calls) == 3 and again.ranking == first.ranking
    with pytest.raises(InputError, match="resume=True needs out_dir"):
        det_al.score_images(model, folder, resume=True, progress=False)
    with pytest.raises(InputError, match="different config"):  # the results on disk are not for this run
        det_al.score_images(model, folder, passes=3, out_dir=tmp_path / "s", resume=True, progress=False)


# --------------------------------------------------------------------------- inputs


class PairDataset(torch.utils.data.Dataset):
    """A torchvision-style dataset: ``(image tensor, target)`` pairs."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        array = np.asarray(Image.open(self.paths[i]).convert("RGB"))
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255, {"boxes": torch.zeros(0, 4)}


class DictDataset(torch.utils.data.Dataset):
    """Items as dicts with an ``image`` (an array) and anything else."""

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i):
        return {"image": self.arrays[i], "id": 100 + i}


def test_every_kind_of_input_gives_the_same_scores(folder, tmp_path):
    paths = _files(folder)
    model = tiny_model()
    kw = dict(passes=2, seed=0, progress=False)
    reference = det_al.score_images(model, folder, **kw)
    assert [s.file_name for s in sorted(reference, key=lambda s: s.image_id)] == [p.name for p in paths]
    coco = {"images": [{"id": i, "file_name": p.name} for i, p in enumerate(paths, start=1)], "annotations": [],
            "categories": [{"id": 5, "name": "a"}, {"id": 6, "name": "b"}, {"id": 7, "name": "c"}]}
    (folder.parent / "pool.json").write_text(json.dumps(coco))
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    inputs = {
        "coco file": dict(images=folder.parent / "pool.json", image_root=folder),
        "coco dict": dict(images=coco, image_root=folder),
        "paths": dict(images=[str(p) for p in paths]),
        "relative paths": dict(images=[p.name for p in paths], image_root=folder),
        "PIL": dict(images=[Image.open(p) for p in paths]),
        "arrays": dict(images=arrays),
        "tensors": dict(images=[torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255 for a in arrays]),
        "dataset": dict(images=PairDataset(paths)),
        "dataset of dicts": dict(images=DictDataset(arrays)),
    }
    for name, given in inputs.items():
        scores = det_al.score_images(model, **given, **kw)
        assert _pairs(scores) == _pairs(reference), name
        assert [len(s.detections) for s in scores] == [len(s.detections) for s in reference], name
        if name in ("coco file", "coco dict", "paths", "relative paths"):  # files keep their names
            assert [s.file_name for s in scores] == [s.file_name for s in reference], name
    # names: the COCO input's categories, else class_1..; in-memory images are images[i]
    assert det_al.score_images(model, coco, image_root=folder, **kw).categories == coco["categories"]
    assert [c["name"] for c in reference.categories] == ["class_1", "class_2", "class_3"]
    assert sorted(s.file_name for s in det_al.score_images(model, arrays, **kw)) == ["images[0]", "images[1]", "images[2]"]
    assert reference.skipped == []


def test_paths_are_named_relative_to_their_common_folder(tmp_path):
    from det_al.data.sources import pool_source

    source = pool_source([tmp_path / "a" / "x.png", str(tmp_path / "a" / "b" / "y.png")])
    assert source.image_root == tmp_path / "a"
    assert [im["file_name"] for im in source.pool["images"]] == ["x.png", "b/y.png"]
    source = pool_source(["b/y.png", "../c.png"], image_root=tmp_path / "a")  # one file outside the root
    assert source.image_root == tmp_path
    assert [im["file_name"] for im in source.pool["images"]] == ["a/b/y.png", "c.png"]


def test_scores_remember_their_root_and_exports_default_to_it(folder, tmp_path):
    """``score_images(model, paths)`` picks the root (the files' common folder); the scores
    keep it, on disk too, and an export finds the files without being told it again."""
    files = _files(folder)
    scores = det_al.score_images(tiny_model(), [str(p) for p in files], passes=2, seed=0, progress=False)
    assert scores.image_root == folder and [s.file_name for s in sorted(scores, key=lambda s: s.image_id)] == [
        p.name for p in files]
    done = det_al.export_label_studio(scores, tmp_path / "ls", local_files_root=folder.parent)
    by_name = {t["data"]["image"] for t in done.tasks}
    assert by_name == {f"/data/local-files/?d={folder.name}/{p.name}" for p in files}
    assert json.loads(done.files["tasks"].read_text()) == done.tasks
    batch = det_al.select(scores, "top", budget=2)
    assert batch.image_root == folder
    cvat = det_al.export_cvat(batch, tmp_path / "cvat")
    assert cvat.images == [str(folder / name) for name in (im["file_name"] for im in batch.coco["images"])]
    # scores made on another machine: the remembered root is not here, the URLs need none
    elsewhere = det_al.Selection({**batch.coco, "info": {"image_root": str(tmp_path / "not_here")}})
    assert len(det_al.export_label_studio(elsewhere, url_prefix="https://h/pool").tasks) == 2
    with pytest.raises(InputError, match="image root"):  # a root given explicitly must exist
        det_al.export_label_studio(elsewhere, url_prefix="https://h/pool", image_root=tmp_path / "not_here")
    saved = det_al.score_images(tiny_model(), [str(p) for p in files], passes=2, seed=0, progress=False,
                                out_dir=tmp_path / "scores")
    assert det_al.Scores.load(tmp_path / "scores").image_root == saved.image_root == folder
    run = json.loads((tmp_path / "scores" / "run.json").read_text())
    assert run["image_root"] == str(folder)
    # run.json is written one way: in memory the scores hold the same record as on disk (but the
    # time, and the shard's size that only a streamed run has)
    assert {k: v for k, v in scores.run.items() if k != "time"} == {k: v for k, v in run.items() if k not in ("time", "n_shard")}


@pytest.mark.parametrize("images, categories, message", [
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)], None, r"images\[1\]: expected an \[H, W, 3\] uint8"),
    ([torch.zeros(3, 8, 8), torch.full((3, 8, 8), 255.0)], None, r"images\[1\]: tensor values must be finite and in \[0, 1\]"),
    (["a.png", np.zeros((8, 8, 3), np.uint8)], None, "mixes paths and in-memory images"),
    ([], None, "nothing to score"),
    (42, None, "expected a folder, a COCO file or dict"),
    ({"images": [{"id": 1}]}, None, "images \\(COCO dict\\)"),
    (None, None, "expected a folder"),
    ([np.zeros((8, 8, 3), np.uint8)], ["cat", "dog"], "2 categories for a model of 3 classes"),
    ([np.zeros((8, 8, 3), np.uint8)], ["N/A", "dog", "N/A"], "category names must be unique, got 'N/A' more than once"),
])
def test_bad_input_is_refused_before_scoring(images, categories, message):
    model = tiny_model()
    calls = []
    model.backbone.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(InputError, match=message):
        det_al.score_images(model, images, categories=categories, progress=False)
    assert calls == []


def test_cli_score_categories_as_the_api_resolves_them(folder, tmp_path, capsys):
    from det_al.models.checkpoint import save_checkpoint
    from det_al.config import config_from_dict

    config = config_from_dict({"model": {"name": "fasterrcnn_tiny", "num_classes": 4,
                                         "options": {"min_size": 64, "max_size": 64, "box_score_thresh": 0.0}}})
    model = tiny_model()
    save_checkpoint(tmp_path / "dup.pt", model, config, [{"id": 1, "name": "N/A"}, {"id": 2, "name": "a"},
                                                          {"id": 3, "name": "b"}])
    # save_checkpoint refuses repeated names: write the file a careless tool would
    stored = torch.load(tmp_path / "dup.pt", weights_only=True)
    stored["categories"][2]["name"] = "N/A"
    torch.save(stored, tmp_path / "dup.pt")
    assert main(["score", "-k", str(tmp_path / "dup.pt"), "-p", str(folder), "-o", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err.strip()
    assert "dup.pt" in err and "'N/A'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o1" / "ranking.jsonl").exists()
    # a plain state dict and a folder: no categories anywhere, so class_1 .. class_3
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    (tmp_path / "config.yaml").write_text(json.dumps({"model": {**config.model.__dict__, "options": dict(config.model.options)},
                                                      "passes": {"passes": 2}}))
    assert main(["score", "-k", str(tmp_path / "plain.pt"), "-c", str(tmp_path / "config.yaml"), "-p", str(folder),
                 "-o", str(tmp_path / "o2"), "--no-progress"]) == 0
    labels = json.loads((tmp_path / "o2" / "pseudo_labels.json").read_text())
    assert [c["name"] for c in labels["categories"]] == ["class_1", "class_2", "class_3"]


def test_unsupported_models_and_wrappers(folder):
    with pytest.raises(InputError, match="unsupported detector class Linear"):
        det_al.score_images(nn.Linear(2, 2), folder, progress=False)
    model = tiny_model()
    kw = dict(passes=2, seed=0, progress=False)
    wrapped = det_al.score_images(nn.DataParallel(model), [_files(folder)[0]], **kw)
    assert _pairs(wrapped) == _pairs(det_al.score_images(model, [_files(folder)[0]], **kw))


# --------------------------------------------------------------------------- the model is left as it was


def _user_model() -> nn.Module:
    """A model as a user might hold it mid-training: in train mode with one frozen part and a hook."""
    model = tiny_model()
    model.train()
    model.backbone.eval()
    model.roi_heads.register_forward_hook(lambda module, args, out: None)
    return model


def test_model_state_restored_after_success(folder):
    model = _user_model()
    before = state(model)
    scores = det_al.score_images(model, folder, passes=2, progress=False)
    assert len(scores) == 3 and scores.skipped == []  # a train-mode model is scored (in eval), not skipped
    assert state(model) == before
    assert model.training and not model.backbone.training


class FailingDataset(torch.utils.data.Dataset):
    """Two images; reading the second raises (the user's dataset is broken)."""

    def __init__(self, image: np.ndarray):
        self.image = image

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i):
        if i == 1:
            raise RuntimeError("disk gone")
        return self.image


def test_model_state_restored_after_an_exception_mid_run(folder):
    model = _user_model()
    before = state(model)
    image = np.asarray(Image.open(_files(folder)[0]).convert("RGB"))
    calls = []
    model.backbone.register_forward_hook(lambda *a: calls.append(1))
    before = state(model)
    with pytest.raises(RuntimeError, match="disk gone"):
        det_al.score_images(model, FailingDataset(image), passes=2, progress=False)
    assert calls  # the first image was scored: the error came mid-run
    assert state(model) == before


def test_model_state_restored_after_ctrl_c_mid_run(folder):
    model = _user_model()
    calls = []

    def interrupt(module, args, out):
        calls.append(1)
        if len(calls) == 2:  # the second image's forward pass
            raise KeyboardInterrupt

    model.backbone.register_forward_hook(interrupt)
    before = state(model)
    with pytest.raises(KeyboardInterrupt):
        det_al.score_images(model, folder, passes=2, progress=False)
    assert len(calls) == 2
    assert state(model) == before


def test_preserved_model_restores_modes_hooks_and_devices():
    from det_al.api import preserved_model

    model = _user_model()
    before = state(model)
    with preserved_model(model):
        assert not any(m.training for m in model.modules())
        model.roi_heads.register_forward_pre_hook(lambda *a: None)
        for hook in list(model.roi_heads._forward_hooks):  # a hook removed in the block comes back
            del model.roi_heads._forward_hooks[hook]
        model.double()  # dtype changes are not restored, but devices are: see the CUDA test
    model.float()
    assert state(model) == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_restored_when_scoring_elsewhere(folder):
    model = _user_model()
    before = state(model)
    scores = det_al.score_images(model, folder, passes=2, device="cuda", progress=False)
    assert len(scores) == 3 and state(model) == before
    gpu = tiny_model().cuda()
    det_al.score_images(gpu, folder, passes=2, progress=False)  # device=None: the model's own
    assert {p.device.type for p in gpu.parameters()} == {"cuda"}


def test_model_hash_covers_every_state_tensor():
    from det_al.api import model_sha256

    a, b = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2)), nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    b.load_state_dict(a.state_dict())
    assert model_sha256(a) == model_sha256(b)
    b[1].num_batches_tracked += 1  # a 0-d integer buffer
    assert model_sha256(a) != model_sha256(b)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b[0].bias[1] += 1e-6
    assert model_sha256(a) != model_sha256(b)


def test_mc_dropout_context_manager():
    model = tiny_model()
    x = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        plain, _ = model.roi_heads.box_predictor(torch.ones(4, 128))  # (class logits, box deltas)
        with det_al.mc_dropout(model, 0.5, seed=0) as control:
            assert control.sites == ("roi_heads.box_predictor",)
            dropped, _ = model.roi_heads.box_predictor(torch.ones(4, 128))
            again, _ = model.roi_heads.box_predictor(torch.ones(4, 128))
            model(x)
    assert not torch.equal(plain, dropped) and not torch.equal(dropped, again)  # masks drawn per call
    with torch.no_grad(), det_al.mc_dropout(model, 0.5, seed=0):
        assert torch.equal(model.roi_heads.box_predictor(torch.ones(4, 128))[0], dropped)  # same seed, same mask
    assert not model.roi_heads.box_predictor._forward_pre_hooks
    assert not model.training


# --------------------------------------------------------------------------- end to end


def test_untrained_torchvision_model_end_to_end(folder, tmp_path):
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    from det_al.annotation.label_studio import validate_percent_value
    from det_al.annotation.label_studio_import import tasks_to_coco

    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3,
                                                  box_score_thresh=0.0)  # built in train mode
    scores = det_al.score_images(model, folder, categories=["cat", "dog"], passes=2, seed=0, progress=False)
    assert model.training and len(scores) == 3
    assert all(d["category_id"] in (1, 2) for s in scores for d in s.detections)
    batch = det_al.select(scores, "top", budget=2)
    assert batch.image_ids == [s.image_id for s in scores[:2]]
    assert scores.embeddings.shape[0] == 3 and sorted(scores.embedding_ids) == [1, 2, 3]
    for strategy in ("diverse", "class-balanced", "random", "top:box"):  # in-memory context for every strategy
        chosen = scores.select(strategy, budget=2)
        assert len(chosen) == 2 and set(chosen.image_ids) <= {1, 2, 3}, strategy
        assert [im["rank"] for im in chosen.coco["images"]] == sorted(im["rank"] for im in chosen.coco["images"])
    done = det_al.export_label_studio(batch, tmp_path / "ls", url_prefix="https://h/pool", image_root=folder,
                                      model_version="v1")
    assert done.files["tasks"].exists() and len(done.tasks) == 2
    # the CLI on the saved selection writes the very same files
    path = batch.save(tmp_path / "sel")
    assert main(["export", "label-studio", "--selection", str(path), "--out", str(tmp_path / "cli"),
                 "--image-root", str(folder), "--url-prefix", "https://h/pool", "--model-version", "v1"]) == 0
    for name in ("tasks.json", "labeling_config.xml"):
        assert (tmp_path / "ls" / name).read_text() == (tmp_path / "cli" / name).read_text()
    tasks = json.loads(done.files["tasks"].read_text())
    regions = [r for t in tasks for r in t["predictions"][0]["result"]]
    assert regions and {r["value"]["rectanglelabels"][0] for r in regions} <= {"cat", "dog"}
    for r in regions:
        validate_percent_value(r["value"], r["type"])
    # accepted as they are, the predictions come back as the selection's detections
    finished = [{**t, "id": i, "annotations": [{"id": i, "result": t["predictions"][0]["result"],
                                                  "was_cancelled": False}]} for i, t in enumerate(tasks, start=1)]
    labels, report = tasks_to_coco(finished, batch.coco)
    assert report.n_annotations == len(regions) == len(labels["annotations"])
    cvat = det_al.export_cvat(batch, tmp_path / "cvat", image_root=folder)
    assert cvat.files["annotations"].read_text() == cvat.xml and len(cvat.images) == 2


def test_export_refuses_bad_url_sources(tmp_path):
    selection = {"images": [{"id": 1, "file_name": "a.png", "width": 4, "height": 4}], "annotations": [],
                 "categories": [{"id": 1, "name": "a"}]}
    with pytest.raises(InputError, match="exactly one image URL source"):
        det_al.export_label_studio(selection)
    with pytest.raises(InputError, match="exactly one image URL source.*url_prefix, cloud_prefix"):
        det_al.export_label_studio(selection, url_prefix="https://h", cloud_prefix="s3://b")
    with pytest.raises(InputError, match="--cloud-prefix must start with"):
        det_al.export_label_studio(selection, cloud_prefix="ftp://b")
    done = det_al.export_label_studio(selection, image_url=lambda im: "u/" + im["file_name"])
    assert done.tasks[0]["data"]["image"] == "u/a.png" and done.files == {}


# --------------------------------------------------------------------------- README


def readme_python_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the README's Python section should hold one example"
    return blocks[0]


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    code = readme_python_example()
    assert len(code.strip().splitlines()) <= 14
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in printed] == ["1", "2", "3"]
    assert all(line.split()[2].startswith("images/drifted_") for line in printed)
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert len(tasks) == 2 and tasks[0]["data"]["image"].startswith("https://example.com/pool/images/")
    assert tasks[0]["data"]["rank"] == 1


def test_import_det_al_is_cheap():
    import subprocess
    import sys

    code = "import sys, det_al; assert 'torch' not in sys.modules; print(det_al.InputError.__name__)"
    env = {**os.environ, "PYTHONPATH": str(README.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "InputError"


def test_a_device_this_machine_lacks_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """Not after three images and a pool.json (issue 26): checked first, in one line."""
    import det_al.models.device as device_module

    monkeypatch.setattr(device_module.torch.cuda, "is_available", lambda: False)
    images = tmp_path / "pool"
    generate(images, 2, "drifted", seed=0, size=64)
    model = fasterrcnn_tiny(num_classes=4).eval()
    with pytest.raises(InputError, match=r"^--device cuda: this machine has no CUDA device"):
        det_al.score_images(model, images, passes=2, device="cuda", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="'gpu' is not a device name torch knows"):
        det_al.score_images(model, images, passes=2, device="gpu")


class _OwnPredictor(nn.Module):
    """A user's own box predictor: no ``cls_score``, other layer names."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Linear(in_features, num_classes)
        self.regressor = nn.Linear(in_features, 4 * num_classes)

    def forward(self, x):
        x = x.flatten(start_dim=1)
        return self.classifier(x), self.regressor(x)


class _WrappedPredictor(nn.Module):
    """``cls_score`` with dropout in front: a Sequential, without ``out_features``."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Sequential(nn.Dropout(0.1), nn.Linear(in_features, num_classes))
        self.bbox_pred = nn.Linear(in_features, 4 * num_classes)

    def forward(self, x):
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


@pytest.mark.parametrize("predictor", [_OwnPredictor, _WrappedPredictor])
def test_common_custom_box_predictors_are_scored(predictor, tmp_path):
    """Issue 26: a user's own predictor crashed with a raw traceback before any check."""
    generate(tmp_path / "pool", 2, "drifted", seed=0, size=64)
    model = fasterrcnn_tiny(num_classes=4, box_score_thresh=0.0)
    in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = predictor(in_features, 4)
    scores = det_al.score_images(model.eval(), tmp_path / "pool", passes=2, seed=0)
    assert len(scores) == 2 and all(s.detections for s in scores)
    assert {d["category_id"] for s in scores for d in s.detections} <= {1, 2, 3}


def test_a_box_predictor_det_al_cannot_read_and_keypoint_rcnn_are_refused_in_one_line(tmp_path):
    from torchvision.models.detection import keypointrcnn_resnet50_fpn

    generate(tmp_path / "pool", 1, "drifted", seed=0, size=64)
    model = fasterrcnn_tiny(num_classes=4)
    model.roi_heads.box_predictor = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))  # no (n, 4n) pair
    with pytest.raises(InputError, match=r"^cannot tell how many classes the box predictor Sequential has: det_al reads"):
        det_al.score_images(model.eval(), tmp_path / "pool", passes=2)
    keypoints = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_keypoints=3, min_size=64, max_size=64)
    with pytest.raises(InputError, match=r"unsupported detector class KeypointRCNN: det_al scores boxes and masks, "
                                         r"and would silently drop the keypoints"):
        det_al.score_images(keypoints.eval(), tmp_path / "pool", passes=2)


def test_in_memory_images_are_refused_by_the_exports(tmp_path):
    """Issue 26: PIL images scored from memory reached Label Studio as URLs like images%5B1%5D."""
    model = fasterrcnn_tiny(num_classes=4, box_score_thresh=0.0).eval()
    pictures = [Image.new("RGB", (64, 48), (30 * i, 90, 200)) for i in range(2)]
    scores = det_al.score_images(model, pictures, passes=2, seed=0)
    batch = det_al.select(scores, "top", budget=2)
    message = r"is 'images\[\d\]', an in-memory image det_al scored: an annotation tool needs image files"
    with pytest.raises(InputError, match=message):
        det_al.export_label_studio(batch, tmp_path / "ls", url_prefix="https://host/pool")
    with pytest.raises(InputError, match=message):
        det_al.export_cvat(batch, tmp_path / "cvat")
    assert not (tmp_path / "ls").exists() and not (tmp_path / "cvat").exists()
    # the user says where each image is served: accepted
    export = det_al.export_label_studio(batch, image_url=lambda image: f"https://host/{image['id']}.png")
    assert sorted(t["data"]["image"] for t in export.tasks) == ["https://host/1.png", "https://host/2.png"]


def test_the_tools_example_runs_a_round_over_the_api(tiny_pool, tiny_checkpoint, tmp_path):
    import subprocess
    import sys

    script = README.parent / "tools" / "one_round.py"
    env = {**os.environ, "PYTHONPATH": str(README.parent), "OMP_NUM_THREADS": "1"}
    run = lambda *args: subprocess.run([sys.executable, str(script), *map(str, args)],  # noqa: E731
                                       capture_output=True, text=True, env=env)
    step = run("select", "--checkpoint", tiny_checkpoint, "--pool", tiny_pool["pool"], "--budget", 2, "--passes", 2,
               "--local-files-root", tiny_pool["root"].parent, "--out", tmp_path / "round1")
    assert step.returncode == 0, step.stderr
    tasks = json.loads((tmp_path / "round1" / "ls" / "tasks.json").read_text())
    assert len(tasks) == 2 and all(t["data"]["image"].startswith(f"/data/local-files/?d={tiny_pool['root'].name}/")
                                   for t in tasks)
    export = [{"id": i, "data": t["data"], "annotations": [{"id": i, "result": t["predictions"][0]["result"]}]}
              for i, t in enumerate(tasks, start=1)]
    (tmp_path / "export.json").write_text(json.dumps(export))
    train = {"images": [], "annotations": [], "categories": tiny_pool["coco"]["categories"]}
    (tmp_path / "train.json").write_text(json.dumps(train))
    step = run("merge", "--round", tmp_path / "round1", "--export", tmp_path / "export.json", "--train",
               tmp_path / "train.json", "--pool", tiny_pool["pool"], "--out", tmp_path / "next")
    assert step.returncode == 0, step.stderr
    merged = json.loads((tmp_path / "next" / "train.json").read_text())
    pool = json.loads((tmp_path / "next" / "pool.json").read_text())
    assert len(merged["images"]) + len(pool["images"]) == len(tiny_pool["coco"]["images"]) and len(pool["images"]) >= 4


def test_a_reference_gives_values_that_compare_across_calls(tmp_path):
    """Issue 26: one image alone always scored 1.0; against the scored pool it gets the value it
    would have had there, whether scored alone, in another batch, or in the pool itself."""
    generate(tmp_path / "pool", 6, "drifted", seed=0, size=64)
    model = fasterrcnn_tiny(num_classes=4, box_score_thresh=0.0).eval()
    pool = det_al.score_images(model, tmp_path / "pool", passes=2, seed=0, out_dir=tmp_path / "scores")
    reference = pool.run["rank_reference"]
    assert reference["n"] == 6 and set(reference["fields"]) == {"presence", "least_confidence", "rpn_gap"}
    by_name = {s.file_name: s.informativeness for s in pool}
    files = sorted((tmp_path / "pool" / "images").iterdir())
    first = files[0]  # image id 1 alone and in the pool: the same passes (seeds follow the id)
    alone = det_al.score_images(model, [first], passes=2, seed=0)
    assert alone[0].informativeness == 1.0  # without a reference: first of a pool of one
    against = det_al.score_images(model, [first], passes=2, seed=0, reference=tmp_path / "scores")
    assert against[0].record["presence"] == pool.ranking[[s.file_name for s in pool].index(f"images/{first.name}")]["presence"]
    # ranked against the pool it was part of, it gets the value it had there
    assert against[0].informativeness == pytest.approx(by_name[f"images/{first.name}"], abs=1e-9)
    assert against.run["rank_reference"] == reference
    # the pool scored again against itself: the same values as its own ranking
    again = det_al.score_images(model, tmp_path / "pool", passes=2, seed=0, reference=pool)
    assert {s.file_name: s.informativeness for s in again} == pytest.approx(by_name, abs=1e-9)
    with pytest.raises(InputError, match="no run.json of a det-al score run here"):
        det_al.score_images(model, [files[0]], passes=2, reference=tmp_path / "pool")


def test_stale_pool_sizes_are_said_once_at_scoring_and_fixed_in_the_written_pool(tmp_path, caplog):
    """Issue 26: a pool whose width/height are stale used to surface only at merge, after labelling,
    one image per run."""
    from det_al.annotation.merge import labels_coco, merge_labels

    generate(tmp_path / "pool", 4, "drifted", seed=0, size=64)
    files = sorted((tmp_path / "pool" / "images").iterdir())
    images = [{"id": i + 1, "file_name": f"images/{p.name}", "width": 64, "height": 64} for i, p in enumerate(files)]
    images[1].update(width=48, height=64)  # stale
    images[3].update(width=64, height=80)  # stale
    pool = {"images": images, "categories": []}
    (tmp_path / "pool.json").write_text(json.dumps(pool))
    model = fasterrcnn_tiny(num_classes=4, box_score_thresh=0.0).eval()
    with caplog.at_level("WARNING", logger="det_al.api"):
        scores = det_al.score_images(model, tmp_path / "pool.json", image_root=tmp_path / "pool", passes=2, seed=0,
                                     out_dir=tmp_path / "scores")
    warnings = [r.getMessage() for r in caplog.records if "record a size" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("2 pool images record a size that is not their file's")
    assert "48x64 in the pool, 64x64 the file" in warnings[0]
    run = json.loads((tmp_path / "scores" / "run.json").read_text())
    assert [(s["image_id"], s["pool"], s["file"]) for s in run["stale_sizes"]] == [(2, [48, 64], [64, 64]), (4, [64, 80], [64, 64])]
    assert scores.run["stale_sizes"] == run["stale_sizes"]
    written = json.loads((tmp_path / "scores" / "pool.json").read_text())
    assert [(im["width"], im["height"]) for im in written["images"]] == [(64, 64)] * 4
    assert json.loads((tmp_path / "pool.json").read_text()) == pool  # the input is never changed
    # the labels carry the files' sizes (the selection's): merge refuses the stale pool, all at once,
    # and takes the written one
    labels = labels_coco([dict(im, width=64, height=64) for im in images], [{"id": 1, "name": "a"}], [[], [], [], []])
    train = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    with pytest.raises(InputError, match=r"^2 labelled image\(s\) have another size in the pool"):
        merge_labels(train, labels, pool)
    assert merge_labels(train, labels, written).n_removed_from_pool == 4
