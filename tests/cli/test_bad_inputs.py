"""The bad-input table: inputs people really pass by mistake, against every command.

Each row builds its inputs in a fresh folder and runs ``det-al`` in-process. A refused row
asserts exit status 2, exactly one line on stderr (``det-al CMD: error: ...``, no traceback)
that names the file (or option) and the problem, and that nothing in the folder changed: no
output appeared, no input was touched. An accepted row (an odd image det_al converts, a hostile
but harmless file name) asserts success and what came out.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

import det_al.run.score_lines
from det_al.cli import main
from det_al.errors import InputError

SCORE = ("--passes", "2", "--seed", "3", "--no-progress")


@dataclass
class Ctx:
    """What a row may use: its own folder, and inputs made once per module."""

    tmp: Path
    pool: dict  # tiny_pool
    checkpoint: Path
    data: dict  # tiny_data (labelled, with annotations)
    scored: Path  # a scored pool: ranking.jsonl, pseudo_labels.json, ...
    selection: Path  # selection.json of the two top images

    def write(self, name: str, content: str | bytes | object) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_text(json.dumps(content), encoding="utf-8")
        return path

    def pool_with(self, images: list[dict], categories: list[dict] | None = None, name: str = "pool.json") -> Path:
        cats = self.pool["coco"]["categories"] if categories is None else categories
        return self.write(name, {"images": images, "categories": cats, "annotations": []})

    def image(self, name: str, image: Image.Image, **save) -> dict:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **save)
        return {"id": 1, "file_name": name, "width": image.width, "height": image.height}

    def score(self, pool: Path, *extra: str, checkpoint: Path | None = None) -> list[str]:
        return ["score", "-k", str(checkpoint or self.checkpoint), "-p", str(pool), "-o", str(self.tmp / "out"),
                *SCORE, *extra]

    def train_config(self, **model) -> Path:
        import yaml

        config = {"model": {"name": "fasterrcnn_tiny", "num_classes": 4, "options": {"min_size": 64, "max_size": 64}, **model},
                  "train": {"epochs": 1, "batch_size": 2}}
        return self.write("train.yaml", yaml.safe_dump(config))

    def loop_args(self, labelled: Path | None = None, pool: Path | None = None, oracle: Path | None = None,
                  val: Path | None = None, config: Path | None = None, root: Path | None = None) -> list[str]:
        d = self.data
        return ["loop", str(config or self.train_config()), "-l", str(labelled or d["train"]), "-p", str(pool or d["val"]),
                "--oracle", str(oracle or d["val"]), "--val", str(val or d["val"]), "-r", str(root or d["root"]),
                "-o", str(self.tmp / "out"), "--quick", "--no-progress"]


@dataclass
class Row:
    argv: list[str]
    error: str | None = None  # the problem, as the line states it (None: accepted)
    names: list[str] = field(default_factory=list)  # what the line must name (files, options)
    check: Callable[[Path], None] | None = None  # for accepted rows: what came out (given the output folder)


# --------------------------------------------------------------------------- inputs

def _coco_images(ctx: Ctx) -> list[dict]:
    return [dict(im) for im in ctx.pool["coco"]["images"]]


def _garbled_checkpoint(ctx: Ctx, transform: Callable[[bytes], bytes]) -> Path:
    return ctx.write("model.pt", transform(ctx.checkpoint.read_bytes()))


def _checkpoint_with_categories(ctx: Ctx, categories: list[dict]) -> Path:
    obj = torch.load(ctx.checkpoint, map_location="cpu", weights_only=True)
    obj["categories"] = categories
    path = ctx.tmp / "model.pt"
    torch.save(obj, path)
    return path


def _checkpoint_without_num_classes(ctx: Ctx) -> Path:
    obj = torch.load(ctx.checkpoint, map_location="cpu", weights_only=True)
    del obj["config"]["model"]["num_classes"]
    path = ctx.tmp / "model.pt"
    torch.save(obj, path)
    return path


def _ranked(n: int) -> Callable[[Path], None]:
    def check(out: Path) -> None:
        assert len((out / "ranking.jsonl").read_text().splitlines()) == n
    return check


def _ranked_and_skipped(n: int, reason: str) -> Callable[[Path], None]:
    def check(out: Path) -> None:
        _ranked(n)(out)
        skipped = json.loads((out / "skipped.json").read_text())
        assert len(skipped) == 1 and reason in skipped[0]["reason"], skipped
    return check


def _odd_image(make: Callable[[], Image.Image], suffix: str = ".png", **save) -> Callable[[Ctx], Row]:
    """An accepted row: a pool of one image of an odd mode or size, scored."""
    def build(ctx: Ctx) -> Row:
        image = ctx.image("odd" + suffix, make(), **save)
        return Row(ctx.score(ctx.pool_with([image])), check=_ranked(1))
    return build


def _folder(ctx: Ctx, name: str) -> Path:
    (ctx.tmp / name).mkdir()
    return ctx.tmp / name


def _with_good(ctx: Ctx, bad: dict) -> Path:
    """A pool of one good image (copied into the row's folder) and ``bad``."""
    good = dict(ctx.pool["coco"]["images"][0])
    (ctx.tmp / good["file_name"]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ctx.pool["root"] / good["file_name"], ctx.tmp / good["file_name"])
    return ctx.pool_with([good, dict(bad, id=good["id"] + 100)])


def _ranking_lines(ctx: Ctx, edit: Callable[[list[dict]], list]) -> Path:
    shutil.copytree(ctx.scored, ctx.tmp / "scored")
    records = [json.loads(line) for line in (ctx.tmp / "scored" / "ranking.jsonl").read_text().splitlines()]
    path = ctx.tmp / "scored" / "ranking.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in edit(records)))
    return path


def _selection_edit(ctx: Ctx, edit: Callable[[dict], None]) -> Path:
    selection = json.loads(ctx.selection.read_text())
    edit(selection)
    return ctx.write("selection.json", selection)


def _labels(ctx: Ctx, edit: Callable[[dict], None] = lambda s: None) -> Path:
    labels = json.loads(ctx.selection.read_text())
    for i, ann in enumerate(labels["annotations"], start=1):
        ann["id"] = i
    edit(labels)
    return ctx.write("labels.json", labels)


def _export(ctx: Ctx, selection: Path, *extra: str, tool: str = "cvat") -> list[str]:
    return ["export", tool, "-s", str(selection), "-o", str(ctx.tmp / "out"), *extra]


def _dup_first(key: str) -> Callable[[dict], None]:
    def edit(coco: dict) -> None:
        coco[key].append(dict(coco[key][0]))
    return edit


ROWS: dict[str, Callable[[Ctx], Row]] = {
    # ---- score: the pool file
    "score/pool-not-json": lambda c: Row(c.score(c.write("pool.json", "{'images': [}")), "not valid JSON", ["pool.json"]),
    "score/pool-is-a-list": lambda c: Row(c.score(c.write("pool.json", [])), "expected a JSON object", ["pool.json"]),
    "score/pool-without-images": lambda c: Row(c.score(c.write("pool.json", {"categories": []})), "missing key 'images'", ["pool.json"]),
    "score/pool-file-missing": lambda c: Row(c.score(c.tmp / "nope.json"), "not found", ["nope.json"]),
    "score/image-id-a-string": lambda c: Row(
        c.score(c.pool_with([dict(_coco_images(c)[0], id="1")])), "'id' must be an integer", ["pool.json"]),
    "score/width-a-string": lambda c: Row(
        c.score(c.pool_with([dict(_coco_images(c)[0], width="96")])), "width", ["pool.json"]),
    "score/duplicate-image-ids": lambda c: Row(
        c.score(c.pool_with([_coco_images(c)[0], dict(_coco_images(c)[1], id=_coco_images(c)[0]["id"])])),
        "duplicate image id", ["pool.json"]),
    "score/duplicate-category-names": lambda c: Row(
        c.score(c.pool_with(_coco_images(c), [{"id": 1, "name": "a"}, {"id": 2, "name": "a"}])),
        "duplicate category name 'a'", ["pool.json"]),
    "score/pool-without-categories": lambda c: Row(  # optional in a pool: accepted (issue 26)
        c.score(c.write("pool.json", {"images": _coco_images(c)}), "--image-root", str(c.pool["root"])),
        check=_ranked(len(c.pool["coco"]["images"]))),
    "score/empty-pool": lambda c: Row(c.score(c.pool_with([])), "the pool has no images", ["pool.json"]),
    "score/empty-image-folder": lambda c: Row(
        c.score(_folder(c, "folder")), "no image files found", ["folder"]),
    # ---- score: where the images are
    "score/image-root-missing": lambda c: Row(
        c.score(c.pool["pool"], "--image-root", str(c.tmp / "no_such_dir")), "image root not found", ["no_such_dir"]),
    "score/image-root-is-a-file": lambda c: Row(
        c.score(c.pool["pool"], "--image-root", str(c.write("root.txt", "x"))), "image root is not a folder", ["root.txt"]),
    "score/file-name-traversal": lambda c: Row(
        c.score(c.pool_with([dict(_coco_images(c)[0], file_name="../../etc/passwd")])),
        "file_name '../../etc/passwd' is outside the image root", ["pool.json", "--allow-outside-root"]),
    "score/file-name-absolute": lambda c: Row(
        c.score(c.pool_with([dict(_coco_images(c)[0], file_name="/etc/passwd")])),
        "file_name '/etc/passwd' is outside the image root", ["pool.json"]),
    "score/file-name-dotdot-inside-root": lambda c: Row(  # sub/../x stays inside the root: accepted
        c.score(c.pool_with([dict(c.image("x.png", Image.new("RGB", (96, 96))), file_name=_folder(c, "sub").name + "/../x.png")])),
        check=_ranked(1)),
    "score/file-name-absolute-allowed": lambda c: Row(
        c.score(c.pool_with([dict(_coco_images(c)[0], file_name=str(c.pool["root"] / _coco_images(c)[0]["file_name"]))]),
                "--allow-outside-root"), check=_ranked(1)),
    "score/file-name-unicode": lambda c: Row(
        c.score(c.pool_with([c.image("bilder/größe_画像 ✓.png", Image.new("RGB", (96, 96), (90, 120, 30)))])),
        check=_ranked(1)),
    "score/file-name-very-long": lambda c: Row(
        c.score(_with_good(c, {"file_name": "x" * 300 + ".png", "width": 96, "height": 96})),
        check=_ranked_and_skipped(1, "File name too long")),
    "score/image-missing": lambda c: Row(
        c.score(_with_good(c, {"file_name": "gone.png", "width": 96, "height": 96})),
        check=_ranked_and_skipped(1, "file not found")),
    "score/image-corrupt": lambda c: Row(
        c.score(_with_good(c, {"file_name": c.write("bad.png", b"\x89PNG\r\n\x1a\n garbage").name})),
        check=_ranked_and_skipped(1, "Truncated File Read")),
    # ---- score: odd images det_al converts (accepted)
    "score/image-16-bit-png": _odd_image(lambda: Image.fromarray((np.arange(96 * 96).reshape(96, 96) * 7).astype(np.uint16))),
    "score/image-cmyk-jpeg": _odd_image(lambda: Image.new("CMYK", (96, 80), (10, 200, 30, 5)), ".jpg"),
    "score/image-palette": _odd_image(lambda: Image.new("RGB", (64, 96), (200, 10, 10)).convert("P")),
    "score/image-grey": _odd_image(lambda: Image.new("L", (96, 96), 77)),
    "score/image-1x1": _odd_image(lambda: Image.new("RGB", (1, 1), (1, 2, 3))),
    # ---- score: the checkpoint
    "score/checkpoint-plain-text": lambda c: Row(
        c.score(c.pool["pool"], checkpoint=c.write("model.pt", "just some notes\nnot a model\n")),
        "not a readable checkpoint", ["model.pt"]),
    "score/checkpoint-empty-file": lambda c: Row(
        c.score(c.pool["pool"], checkpoint=c.write("model.pt", b"")), "not a readable checkpoint", ["model.pt"]),
    "score/checkpoint-truncated": lambda c: Row(
        c.score(c.pool["pool"], checkpoint=_garbled_checkpoint(c, lambda b: b[: len(b) // 2])),
        "not a readable checkpoint", ["model.pt"]),
    "score/checkpoint-random-bytes": lambda c: Row(
        c.score(c.pool["pool"], checkpoint=c.write("model.pt", np.random.default_rng(0).bytes(4096))),
        "not a readable checkpoint", ["model.pt"]),
    "score/checkpoint-a-folder": lambda c: Row(
        c.score(c.pool["pool"], checkpoint=_folder(c, "model.pt")),
        "is a directory", ["model.pt"]),
    "score/checkpoint-duplicate-category-names": lambda c: Row(
        c.score(c.pool["pool"], checkpoint=_checkpoint_with_categories(
            c, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "a"}])),
        "duplicate names: 'a'", ["model.pt"]),
    "score/checkpoint-too-few-categories": lambda c: Row(
        c.score(c.pool["pool"], checkpoint=_checkpoint_with_categories(c, [{"id": 1, "name": "a"}])),
        "1 categories but model.num_classes is 4", ["model.pt"]),
    "score/checkpoint-config-without-num-classes": lambda c: Row(
        c.score(c.pool["pool"], checkpoint=_checkpoint_without_num_classes(c)), "config has no model.num_classes", ["model.pt"]),
    "score/device-cuda-without-gpu": lambda c: Row(
        c.score(c.pool["pool"], "--device", "cuda"), "cuda: this machine has no CUDA device", ["--device"]),
    "score/device-unknown-name": lambda c: Row(
        c.score(c.pool["pool"], "--device", "gpu"), "'gpu' is not a device name torch knows", ["--device"]),
    "train/device-cuda-without-gpu": lambda c: Row(
        ["train", str(c.train_config()), "-t", str(c.data["train"]), "-r", str(c.data["root"]), "-o", str(c.tmp / "out"),
         "--device", "cuda"],
        "no CUDA device", ["--device"]),
    "train/image-root-without-the-files": lambda c: Row(  # e.g. a merged train.json trained without --image-root
        ["train", str(c.train_config()), "-t", str(c.data["train"]), "-r", str(c.tmp), "-o", str(c.tmp / "out")],
        "training images looked for", ["--image-root", "train.json"]),
    "score/image-root-without-the-files": lambda c: Row(
        c.score(c.pool["pool"], "--image-root", str(c.tmp)), "are not under the image root", ["--image-root"]),
    "score/reference-not-a-run": lambda c: Row(
        c.score(c.pool["pool"], "--reference", str(_folder(c, "elsewhere"))), "no run.json of a det-al score run here",
        ["elsewhere"]),
    "score/tta-unknown-view": lambda c: Row(
        c.score(c.pool["pool"], "--tta", "hflip,vflip"), "passes.tta: unknown view 'vflip'", ["vflip"]),
    "score/dropout-site-typo": lambda c: Row(
        c.score(c.pool["pool"], "--set", "passes.sites=[roi_heads.box_predictorr]"),
        "passes.sites: 'roi_heads.box_predictorr' is not a module of the MaskRCNN (did you mean "
        "'roi_heads.box_predictor'", ["passes.sites"]),
    "score/config-unknown-key": lambda c: Row(
        c.score(c.pool["pool"], "--config", str(c.write("c.yaml", "passes:\n  pases: 3\n"))),
        "unknown config key 'passes.pases'", ["c.yaml"]),
    "score/set-unknown-key": lambda c: Row(
        c.score(c.pool["pool"], "--set", "scoring.bogus=1"), "unknown config key 'scoring.bogus'", []),
    # ---- select
    "select/ranking-missing": lambda c: Row(
        ["select", "--ranking", str(c.tmp / "ranking.jsonl"), "-n", "2", "-o", str(c.tmp / "out")], "not found", ["ranking.jsonl"]),
    "select/ranking-not-json": lambda c: Row(
        ["select", "--ranking", str(_ranking_lines(c, lambda r: r[:2] + ["{not json"])), "-n", "2", "-o", str(c.tmp / "out")],
        "line 3", ["ranking.jsonl"]),
    "select/ranking-duplicate-ids": lambda c: Row(
        ["select", "--ranking", str(_ranking_lines(c, lambda r: r + [dict(r[0], rank=99)])), "-n", "2", "-o", str(c.tmp / "out")],
        "appears twice", ["ranking.jsonl"]),
    "select/ranking-wrong-type": lambda c: Row(
        ["select", "--ranking", str(_ranking_lines(c, lambda r: [dict(r[0], informativeness="high")] + r[1:])), "-n", "2",
         "-o", str(c.tmp / "out")], "informativeness must be a finite number", ["ranking.jsonl"]),
    "select/ranking-empty": lambda c: Row(
        ["select", "--ranking", str(_ranking_lines(c, lambda r: [])), "-n", "2", "-o", str(c.tmp / "out")],
        "no records: nothing to select from", ["ranking.jsonl"]),
    "select/budget-zero": lambda c: Row(
        ["select", "--ranking", str(c.scored / "ranking.jsonl"), "-n", "0", "-o", str(c.tmp / "out")], "at least 1", ["--budget"]),
    # ---- export
    "export/selection-not-json": lambda c: Row(_export(c, c.write("selection.json", "]")), "not valid JSON", ["selection.json"]),
    "export/selection-without-size": lambda c: Row(
        _export(c, _selection_edit(c, lambda s: s["images"][0].pop("width"))), "has no width/height", ["selection.json"]),
    "export/selection-duplicate-ids": lambda c: Row(
        _export(c, _selection_edit(c, _dup_first("images"))), "duplicate image id", ["selection.json"]),
    "export/file-name-traversal": lambda c: Row(
        _export(c, _selection_edit(c, lambda s: s["images"][0].update(file_name="../../etc/hostname")),
                "--image-root", str(c.pool["root"])),
        "is outside the image root", ["selection.json"]),
    "export/image-missing": lambda c: Row(
        _export(c, _selection_edit(c, lambda s: s["images"][0].update(file_name="gone.png")), "--image-root", str(c.pool["root"])),
        "file not found", ["gone.png"]),
    "export/image-size-differs": lambda c: Row(
        _export(c, _selection_edit(c, lambda s: s["images"][0].update(width=95)), "--image-root", str(c.pool["root"])),
        "but the selection says 95x", [".png"]),
    "export/url-prefix-not-http": lambda c: Row(
        _export(c, c.selection, "--image-root", str(c.pool["root"]), "--url-prefix", "javascript:alert(1)//",
                tool="label-studio"),
        "is not an http(s)://host/... URL", ["--url-prefix"]),
    "export/url-prefix-file-scheme": lambda c: Row(
        _export(c, c.selection, "--image-root", str(c.pool["root"]), "--url-prefix", "file:///data/pool",
                tool="label-studio"),
        "is not an http(s)://host/... URL", ["--url-prefix"]),
    "export/url-prefix-bucket": lambda c: Row(
        _export(c, c.selection, "--image-root", str(c.pool["root"]), "--url-prefix", "s3://bucket/pool",
                tool="label-studio"),
        "is a bucket URI: use --cloud-prefix", ["--url-prefix"]),
    "export/image-root-missing": lambda c: Row(
        _export(c, c.selection, "--image-root", str(c.tmp / "no_such_dir"), "--url-prefix", "http://h/", tool="label-studio"),
        "image root not found", ["no_such_dir"]),
    # ---- import
    "import/label-studio-not-json": lambda c: Row(
        ["import", "label-studio", str(c.write("export.json", "[{")), "-s", str(c.selection), "-o", str(c.tmp / "out")],
        "not valid JSON", ["export.json"]),
    "import/label-studio-not-a-list": lambda c: Row(
        ["import", "label-studio", str(c.write("export.json", {"tasks": []})), "-s", str(c.selection), "-o", str(c.tmp / "out")],
        "expected a JSON list of tasks", ["export.json"]),
    "import/cvat-zip-garbled": lambda c: Row(
        ["import", "cvat", str(c.write("export.zip", b"PK\x03\x04 not really a zip")), "-s", str(c.selection),
         "-o", str(c.tmp / "out")], "cannot read the zip", ["export.zip"]),
    "import/selection-missing": lambda c: Row(
        ["import", "label-studio", str(c.write("export.json", [])), "-s", str(c.tmp / "sel.json"), "-o", str(c.tmp / "out")],
        "not found", ["sel.json"]),
    # ---- merge
    "merge/train-missing": lambda c: Row(
        ["merge", "-t", str(c.tmp / "train.json"), "-l", str(_labels(c)), "-o", str(c.tmp / "out")], "not found", ["train.json"]),
    "merge/labels-duplicate-ids": lambda c: Row(
        ["merge", "-t", str(c.data["train"]), "-l", str(_labels(c, _dup_first("images"))), "-o", str(c.tmp / "out")],
        "duplicate image id", ["labels.json"]),
    "merge/labels-unknown-category": lambda c: Row(
        ["merge", "-t", str(c.data["train"]), "-l", str(_labels(c, lambda s: s["annotations"][0].update(category_id=77))),
         "-o", str(c.tmp / "out")], "unknown category id 77", ["labels.json"]),
    "merge/out-overwrites-input": lambda c: Row(
        ["merge", "-t", str(c.write("train.json", json.loads(c.data["train"].read_text()))), "-l", str(_labels(c)),
         "-o", str(c.tmp)], "would overwrite an input", ["train.json"]),
    # ---- train
    "train/config-unknown-key": lambda c: Row(
        ["train", str(c.write("t.yaml", "model: {name: fasterrcnn_tiny}\ntrain: {epoch: 1}\n")), "-t", str(c.data["train"]),
         "-r", str(c.data["root"]), "-o", str(c.tmp / "out")], "unknown config key 'train.epoch'", ["t.yaml"]),
    "train/num-classes-wrong-type": lambda c: Row(
        ["train", str(c.train_config(num_classes="four")), "-t", str(c.data["train"]), "-r", str(c.data["root"]),
         "-o", str(c.tmp / "out")], "model.num_classes must be an integer", ["train.yaml"]),
    "train/without-annotations": lambda c: Row(
        ["train", str(c.train_config()), "-t", str(c.write("t.json", {"images": _coco_images(c), "categories": []})),
         "-o", str(c.tmp / "out")],
        "missing key 'annotations'", ["t.json"]),
    "train/file-name-traversal": lambda c: Row(
        ["train", str(c.train_config()), "-t", str(c.write("t.json", dict(
            json.loads(c.data["train"].read_text()),
            images=[dict(im, file_name="../" + im["file_name"]) for im in json.loads(c.data["train"].read_text())["images"]]))),
         "-r", str(c.data["root"]), "-o", str(c.tmp / "out")], "is outside the image root", ["t.json"]),
    "train/image-root-missing": lambda c: Row(
        ["train", str(c.train_config()), "-t", str(c.data["train"]), "-r", str(c.tmp / "no_such_dir"), "-o", str(c.tmp / "out")],
        "image root not found", ["no_such_dir"]),
    "train/init-garbled": lambda c: Row(
        ["train", str(c.train_config()), "-t", str(c.data["train"]), "-r", str(c.data["root"]), "-o", str(c.tmp / "out"),
         "--init", str(c.write("init.pt", "version: 1\n"))], "not a readable checkpoint", ["init.pt"]),
    # ---- loop
    "loop/config-unknown-key": lambda c: Row(
        c.loop_args(config=c.write("l.yaml", "model: {name: fasterrcnn_tiny}\nloop: {round: 2}\n")),
        "unknown config key 'loop.round'", ["l.yaml"]),
    "loop/pool-file-name-absolute": lambda c: Row(
        c.loop_args(pool=c.write("p.json", dict(json.loads(c.data["val"].read_text()), images=[
            dict(im, file_name="/etc/" + Path(im["file_name"]).name) for im in json.loads(c.data["val"].read_text())["images"]]))),
        "is outside the image root", ["p.json"]),
    "loop/val-not-json": lambda c: Row(c.loop_args(val=c.write("v.json", "")), "not valid JSON", ["v.json"]),
    "loop/image-root-missing": lambda c: Row(
        c.loop_args(root=c.tmp / "no_such_dir"),
        "image root not found", ["no_such_dir"]),
    # ---- evaluate (reads a COCO file and its images too)
    "evaluate/file-name-traversal": lambda c: Row(
        ["evaluate", "-k", str(c.checkpoint), "--val", str(c.write("v.json", dict(
            json.loads(c.data["val"].read_text()),
            images=[dict(im, file_name="../../" + im["file_name"]) for im in json.loads(c.data["val"].read_text())["images"]]))),
         "--image-root", str(c.data["root"]), "-o", str(c.tmp / "out")], "is outside the image root", ["v.json"]),
    "evaluate/image-root-missing": lambda c: Row(
        ["evaluate", "-k", str(c.checkpoint), "--val", str(c.data["val"]), "--image-root", str(c.tmp / "no_such_dir"),
         "-o", str(c.tmp / "out")], "image root not found", ["no_such_dir"]),
}


# --------------------------------------------------------------------------- running the rows


@pytest.fixture(scope="module")
def scored(tiny_pool, tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scored")
    assert main(["score", "-k", str(tiny_checkpoint), "-p", str(tiny_pool["pool"]), "-o", str(out), *SCORE]) == 0
    return out


@pytest.fixture(scope="module")
def selection(scored, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("selection")
    assert main(["select", "--ranking", str(scored / "ranking.jsonl"), "-n", "2", "-o", str(out)]) == 0
    return out / "selection.json"


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file and folder under ``folder``: its bytes (None for a folder)."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input(row, tiny_pool, tiny_checkpoint, tiny_data, scored, selection, tmp_path, capsys):
    ctx = Ctx(tmp_path, tiny_pool, tiny_checkpoint, tiny_data, scored, selection)
    case = ROWS[row](ctx)
    before = _snapshot(tmp_path)
    code, out, err = _run(case.argv, capsys)
    if case.error is None:
        assert code == 0, err
        assert "Traceback" not in err
        case.check(tmp_path / "out")
        return
    command = case.argv[0]
    assert code == 2, (out, err)
    assert err.endswith("\n") and len(err.splitlines()) == 1, err
    assert err.startswith(f"det-al {command}: error: ") and "Traceback" not in err, err
    assert case.error in err, err
    for name in case.names:
        assert name in err, (name, err)
    assert _snapshot(tmp_path) == before  # nothing written, nothing changed


def test_the_table_covers_every_command_and_enough_inputs():
    commands = {row.split("/")[0] for row in ROWS}
    assert commands >= {"score", "select", "export", "import", "merge", "train", "loop"}
    assert len(ROWS) >= 40


# --------------------------------------------------------------------------- the library's own checks
# det_al.run.checks.check_run: the checks every entry of a scoring run makes once (the CLI, the Python API).


@pytest.fixture(scope="module")
def model_and_categories(tiny_checkpoint):
    from det_al.models.checkpoint import load_checkpoint

    model, config, categories, _ = load_checkpoint(tiny_checkpoint)
    return model, config, categories


def _score_pool(model, config, categories, pool, root, allow_outside_root=False):
    """A scoring run's entry: the checks, then the scoring, in memory."""
    from det_al.run.checks import check_run
    from det_al.run.pool_run import score_in_memory
    from det_al.scores import Scores

    categories = check_run(model, pool["images"], root, categories=categories, allow_outside_root=allow_outside_root)
    return Scores.from_results(score_in_memory(model, config, categories, pool["images"], root, progress=False),
                               categories, config)


def test_a_model_in_train_mode_is_refused_before_any_image(model_and_categories, tiny_pool, monkeypatch):
    model, config, categories = model_and_categories
    monkeypatch.setattr(det_al.run.score_lines, "PoolDataset", None)  # never reached
    model.train()
    try:
        with pytest.raises(InputError, match=r"^cannot score with a model in train mode: call model.eval\(\) first"):
            _score_pool(model, config, categories, tiny_pool["coco"], tiny_pool["root"])
    finally:
        model.eval()


def test_a_detector_class_det_al_does_not_support_is_refused(model_and_categories, tiny_pool):
    _, config, categories = model_and_categories
    with pytest.raises(InputError, match=r"^cannot score with this model: unsupported detector class Linear"):
        _score_pool(torch.nn.Linear(2, 2).eval(), config, categories, tiny_pool["coco"], tiny_pool["root"])


@pytest.mark.parametrize("categories, message", [
    ([{"id": 1, "name": "a"}], "no category for model labels 2, 3: 1 categories for a model of 3 classes"),
    ([], "no category for model labels 1, 2, 3: 0 categories"),
    ([{"id": i, "name": n} for i, n in enumerate("abcd", 1)], "4 categories for a model of 3 classes: no model label for ['d']"),
    ([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 1, "name": "c"}], "category ids must be unique, got 1 more than once"),
    ([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "a"}], "category names must be unique, got 'a' more than once"),
    ([{"id": "1", "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}], "categories[0] must be a name or a dict with an integer 'id'"),
])
def test_categories_must_name_every_model_label_once(model_and_categories, tiny_pool, categories, message):
    # never category_id -1 in the outputs: a label without a category is refused up front
    model, config, _ = model_and_categories
    with pytest.raises(InputError) as e:
        _score_pool(model, config, categories, tiny_pool["coco"], tiny_pool["root"])
    assert str(e.value).startswith(message), str(e.value)


def test_library_refuses_a_missing_root_and_escaping_names_unless_allowed(model_and_categories, tiny_pool, tmp_path):
    from det_al.data.pool import PoolImages
    from det_al.run.checks import check_pool

    model, config, categories = model_and_categories
    with pytest.raises(InputError, match="image root not found"):
        _score_pool(model, config, categories, tiny_pool["coco"], tmp_path / "missing")
    images = [dict(im) for im in tiny_pool["coco"]["images"][:2]]
    absolute = str(tiny_pool["root"] / images[1]["file_name"])
    images[1]["file_name"] = absolute
    with pytest.raises(InputError, match=r"images\[1\] \(id 2\): file_name '.*' is outside the image root"):
        _score_pool(model, config, categories, {"images": images}, tmp_path)
    scores = _score_pool(model, config, categories, {"images": images}, tmp_path, allow_outside_root=True)
    assert [s["file_name"] for s in scores.skipped] == [images[0]["file_name"]]  # not under tmp_path
    assert [r["file_name"] for r in scores.ranking] == [absolute]
    # names that only look suspicious are not refused; the first escaping one is named
    # ("a." then "../z": the pool's names are stored back to back, the ".." spans two of them)
    names = ["a..b.png", "x/../y.png", "a.", "../z", "..", "ok.png"]
    pool = PoolImages.from_dicts({"id": i, "file_name": n} for i, n in enumerate(names))
    with pytest.raises(InputError, match=r"^images\[3\] \(id 3\): file_name '\.\./z' is outside"):
        check_pool(pool, tmp_path)
    with pytest.raises(InputError, match=r"^images\[3\] \(id 4\): file_name '\.\.' is outside"):
        check_pool(pool[np.array([0, 1, 2, 4, 5])], tmp_path)
    # accepted as names; (none of these files exists, which is the next check)
    with pytest.raises(InputError, match=r"^4 of 4 pool images looked for \(e.g. 'a..b.png'\) are not under"):
        check_pool(pool[np.array([0, 1, 2, 5])], tmp_path)


def test_a_root_without_the_pool_files_is_refused_naming_where_they_are(tiny_pool, tmp_path, capsys):
    """An image root that exists but holds none of the files: one line, no output, and the folder
    that does hold them (issue 26: exit 0 with every image skipped)."""
    from det_al.data.locate import check_images_found, probe_names

    root = tiny_pool["root"]  # the files are images/*.png under it
    names = probe_names(len(tiny_pool["coco"]["images"]), lambda i: tiny_pool["coco"]["images"][i]["file_name"])
    check_images_found(names, root)
    n = len(names)
    with pytest.raises(InputError, match=rf"^{n} of {n} pool images looked for .* are not under the image root "
                                         rf".*images; {n} are under {re.escape(str(root))}: is that the image root"):
        check_images_found(names, root / "images")  # a child folder: the files are in its parent
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(InputError, match=r"are not under the image root .*elsewhere: is the image root right \(--image-root\)\?$"):
        check_images_found(names, elsewhere)
    missing_one = [*names[:-1], "images/gone.png"]  # a few missing files are skipped later, not refused
    check_images_found(missing_one, root)


def _failing_passes(errors: list[str]):
    def run_passes(model, images, *args, **kwargs):
        if len(images) == 1 and errors:
            raise RuntimeError(errors.pop(0))
        raise RuntimeError("batch of several")
    return run_passes


def test_first_images_failing_with_one_model_error_stop_the_run(tiny_pool, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(det_al.run.score_lines, "run_passes", _failing_passes(["expected a CUDA tensor"] * 6))
    out = tmp_path / "out"
    code, _, err = _run(["score", "-k", str(tiny_checkpoint), "-p", str(tiny_pool["pool"]), "-o", str(out), *SCORE], capsys)
    assert code == 2
    assert err == (
        "det-al score: error: stopped: the first 3 images of the pool all failed in the model with the same error, "
        "so the model (or checkpoint, device, config) is at fault, not the images: "
        "model failed: RuntimeError: expected a CUDA tensor\n"
    )
    assert not out.exists()  # nothing left behind: not even key.json or an empty results.jsonl


def test_model_errors_that_differ_or_come_after_a_success_skip_images(model_and_categories, tiny_pool, monkeypatch):
    from det_al.inference.passes import run_passes

    model, config, categories = model_and_categories
    # three different errors: image faults, not a model fault
    monkeypatch.setattr(det_al.run.score_lines, "run_passes", _failing_passes(["a", "b", "c"]))
    scores = _score_pool(model, config, categories, {"images": tiny_pool["coco"]["images"][:3]}, tiny_pool["root"])
    assert [s["reason"] for s in scores.skipped] == ["model failed: RuntimeError: a", "model failed: RuntimeError: b",
                                                     "model failed: RuntimeError: c"]
    # one success first: later failures, however alike, are skipped
    calls = []

    def second_and_later_fail(model, images, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            return run_passes(model, images, *args, **kwargs)
        raise RuntimeError("same")

    monkeypatch.setattr(det_al.run.score_lines, "run_passes", second_and_later_fail)
    scores = _score_pool(model, config, categories, {"images": tiny_pool["coco"]["images"][:4]}, tiny_pool["root"])
    assert len(scores.ranking) == 1 and len(scores.skipped) == 3


def test_image_read_errors_never_stop_the_run(model_and_categories, tiny_pool, tmp_path):
    # every image unreadable: each one skipped with its reason, no stop (the files are there; a root
    # holding none of them is refused up front, see the test above)
    model, config, categories = model_and_categories
    root = tmp_path / "root"
    shutil.copytree(tiny_pool["root"], root)
    images = tiny_pool["coco"]["images"]
    for image in images[:5]:
        (root / image["file_name"]).write_bytes(b"not an image at all")
    (root / images[5]["file_name"]).unlink()
    scores = _score_pool(model, config, categories, tiny_pool["coco"], root)
    reasons = [s["reason"] for s in scores.skipped]
    assert len(reasons) == 6 and reasons[5] == "file not found" and all("corrupt" in r or "not an image" in r for r in reasons[:5]), reasons
    with pytest.raises(InputError, match="6 of 6 pool images looked for"):
        _score_pool(model, config, categories, tiny_pool["coco"], tmp_path)


def test_train_takes_num_classes_from_the_training_file(tiny_data, tmp_path, capsys):
    import yaml

    from det_al.models.checkpoint import load_checkpoint

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "fasterrcnn_tiny", "options": {"min_size": 64, "max_size": 64}},
                                      "train": {"epochs": 1, "batch_size": 2}}))
    code, out, err = _run(["train", str(config), "-t", str(tiny_data["train"]), "-r", str(tiny_data["root"]),
                           "-o", str(tmp_path / "out"), "--no-progress"], capsys)
    assert code == 0, err
    n = len(tiny_data["coco"]["categories"])
    assert f"model.num_classes not set in {config}: used {n + 1} ({n} categories of {tiny_data['train']} + background)" in out
    _, stored, categories, _ = load_checkpoint(tmp_path / "out" / "last.pt")
    assert stored.model.num_classes == n + 1 and categories == tiny_data["coco"]["categories"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["config"]["model"]["num_classes"] == n + 1
    # the same config (num_classes left out) loads the checkpoint: it takes the checkpoint's
    from det_al.config import load_config

    model, resolved, _, _ = load_checkpoint(tmp_path / "out" / "last.pt", load_config(config))
    assert resolved.model.num_classes == n + 1


@pytest.mark.parametrize("text, message", [
    ("model: {num_classes: null}\n", None),
    ("model: {num_classes: 1}\n", "model.num_classes must count background and at least one class"),
    ("model: {num_classes: [4]}\n", "model.num_classes must be an integer"),
])
def test_num_classes_null_means_from_the_data(tmp_path, text, message):
    from det_al.config import Config, load_config

    path = tmp_path / "c.yaml"
    path.write_text(text)
    if message is None:
        assert load_config(path).model.num_classes is None and Config().model.num_classes is None
    else:
        with pytest.raises(InputError, match=message):
            load_config(path)
