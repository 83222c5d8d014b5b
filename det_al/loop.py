"""A simulated active-learning loop: train -> evaluate -> score -> select -> label, in rounds.

For every strategy and seed of ``config.loop`` the loop starts from the same labelled set:

1. train on the labelled set: from scratch, or (``loop.retrain: finetune``) from the previous
   round's weights for ``loop.finetune_epochs`` at ``loop.finetune_lr``; round 0 is the same
   for every strategy of a seed, so it is trained, evaluated and scored once;
2. evaluate on the validation set (COCO bbox mAP);
3. unless this was the last round: score the pool (:func:`det_al.scoring.score_pool`), pick a
   batch with the strategy (:mod:`det_al.strategies`), reveal the selected images' labels from
   the oracle file and move them from the pool to the labelled set.

Each round appends one row to ``results.csv`` (:data:`CSV_FIELDS`), flushed at once: the
selected image ids are in the row, so after a crash ``resume=True`` skips completed rows and
rebuilds every strategy's labelled set and pool from the recorded selections. Per round, the
training folder ``runs/<strategy>/seed<s>/round<r>/`` holds the labelled COCO file and the
checkpoints (``runs/seed<s>/round0/`` for the shared round 0); on resume a finished training
there is reused. ``learning_curve.png`` plots mean +- std of mAP over seeds against the
labelled images, one line per strategy.

Under torchrun every process calls :func:`run_loop`; rank 0 runs the loop and, at each
training, the others train with it (DistributedDataParallel, :func:`det_al.training.train_model`)
and wait for it otherwise (evaluation, scoring and selection run on rank 0 alone).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from det_al.config import Config, config_to_dict
from det_al.distributed import barrier, broadcast_from_main, fail_together, is_main, process_group
from det_al.errors import InputError
from det_al.files import atomic_open, read_json, write_json
from det_al.strategies import classes_from_annotations, get_strategy

logger = logging.getLogger(__name__)

CSV_FIELDS = (
    "strategy",
    "seed",
    "round",
    "labelled_images",
    "labelled_boxes",
    "map",
    "map50",
    "pool_images",
    "selected_images",
    "selected_boxes",
    "selected_domains",
    "seconds",
    "selected",
)
RETRAIN = ("scratch", "finetune")
# Settings that must not change when a run is resumed (rounds, strategies and seeds may grow).
_FIXED_ON_RESUME = ("budget", "budget_boxes", "retrain", "finetune_epochs", "finetune_lr", "pre_factor")


# --------------------------------------------------------------------------- data


def check_loop_config(config: Config) -> None:
    """Range checks of ``config.loop``; a bad value is an :class:`InputError` naming the key."""
    loop = config.loop
    if loop.rounds < 0:
        raise InputError(f"loop.rounds must be >= 0, got {loop.rounds}")
    if loop.budget < 1 and loop.budget_boxes < 1:
        raise InputError("loop.budget (images) or loop.budget_boxes must be >= 1")
    if loop.budget_boxes < 0:
        raise InputError(f"loop.budget_boxes must be >= 0 (0: a budget in images), got {loop.budget_boxes}")
    if loop.retrain not in RETRAIN:
        raise InputError(f"loop.retrain must be scratch or finetune, got '{loop.retrain}'")
    if not loop.strategies:
        raise InputError("loop.strategies is empty")
    if len(set(loop.strategies)) != len(loop.strategies) or len(set(loop.seeds)) != len(loop.seeds):
        raise InputError("loop.strategies and loop.seeds must not repeat")
    if not loop.seeds:
        raise InputError("loop.seeds is empty")
    for name in loop.strategies:
        try:
            get_strategy(name)
        except ValueError as e:
            raise InputError(f"loop.strategies: {e}") from e
    if loop.finetune_epochs < 0 or loop.finetune_lr < 0:
        raise InputError("loop.finetune_epochs and loop.finetune_lr must be >= 0 (0: those of train)")
    if loop.pre_factor < 1:
        raise InputError(f"loop.pre_factor must be >= 1, got {loop.pre_factor}")


def budgets(config: Config) -> tuple[int | None, int | None]:
    """``(budget, budget_boxes)`` for the strategies: a box budget when ``budget_boxes > 0``."""
    if config.loop.budget_boxes > 0:
        return None, config.loop.budget_boxes
    return config.loop.budget, None


def subset(coco: Mapping[str, Any], image_ids: Iterable[int]) -> dict:
    """The images (in ``coco``'s order) and annotations of ``image_ids``, plus the categories."""
    keep = set(int(i) for i in image_ids)
    return {
        "images": [im for im in coco["images"] if int(im["id"]) in keep],
        "annotations": [a for a in coco.get("annotations", []) if int(a["image_id"]) in keep],
        "categories": coco.get("categories", []),
    }


def shrink(coco: Mapping[str, Any], n: int) -> dict:
    """The first ``n`` images of ``coco`` with their annotations (for ``--quick``)."""
    return subset(coco, [im["id"] for im in coco["images"][:n]])


def quick_config(config: Config) -> Config:
    """Tiny settings for a smoke test: one seed, one round of at most 2 images (or 6 boxes), one
    epoch of one batch, two passes. The data are cut down by :func:`run_loop` with ``quick=True``."""
    loop = config.loop
    return dataclasses.replace(
        config,
        loop=dataclasses.replace(
            loop,
            rounds=min(loop.rounds, 1),
            budget=min(loop.budget, 2) if loop.budget_boxes <= 0 else loop.budget,
            budget_boxes=min(loop.budget_boxes, 6) if loop.budget_boxes > 0 else 0,
            seeds=loop.seeds[:1],
        ),
        train=dataclasses.replace(config.train, epochs=1, batch_size=8, warmup_iters=0, eval_every=0, max_minutes=0.5),
        passes=dataclasses.replace(config.passes, passes=2, dropout=config.passes.rates()[0], tta=()),
    )


QUICK_SIZES = {"labelled": 4, "pool": 8, "val": 4}


@dataclasses.dataclass
class LoopData:
    """The loop's inputs in memory."""

    labelled: dict
    pool: dict
    oracle: dict
    val: dict
    image_root: Path
    categories: list[dict]

    @classmethod
    def load(
        cls,
        labelled: str | os.PathLike,
        pool: str | os.PathLike,
        oracle: str | os.PathLike,
        val: str | os.PathLike,
        image_root: str | os.PathLike,
        quick: bool = False,
    ) -> "LoopData":
        from det_al.coco import load_coco

        data = {
            "labelled": load_coco(labelled, require_annotations=True),
            "pool": load_coco(pool),
            "oracle": load_coco(oracle, require_annotations=True),
            "val": load_coco(val, require_annotations=True),
        }
        if quick:
            data = {k: shrink(v, QUICK_SIZES.get(k, len(v["images"]))) for k, v in data.items()}
            data["oracle"] = subset(data["oracle"], [im["id"] for im in data["pool"]["images"]])
        oracle_ids = {int(im["id"]) for im in data["oracle"]["images"]}
        missing = [im["id"] for im in data["pool"]["images"] if int(im["id"]) not in oracle_ids]
        if missing:
            raise InputError(f"the oracle has no labels for pool image id {missing[0]}", oracle)
        overlap = {int(im["id"]) for im in data["labelled"]["images"]} & {
            int(im["id"]) for im in data["pool"]["images"]
        }
        if overlap:
            raise InputError(f"image id {min(overlap)} is both labelled and in the pool", pool)
        names = [c["name"] for c in data["labelled"]["categories"]]
        if [c["name"] for c in data["oracle"]["categories"]] != names or [
            c["name"] for c in data["val"]["categories"]
        ] != names:
            raise InputError("the labelled, oracle and validation files must have the same categories", oracle)
        return cls(image_root=Path(image_root), categories=list(data["labelled"]["categories"]), **data)


# --------------------------------------------------------------------------- results file


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The complete rows of a results CSV (a torn last line from a crash is dropped)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        text = f.read()
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(complete))
    if reader.fieldnames is not None and tuple(reader.fieldnames) != CSV_FIELDS:
        raise InputError(f"not a det_al loop results file (columns {reader.fieldnames})", path)
    for row in reader:
        try:
            rows.append(_parse_row(row))
        except (TypeError, ValueError) as e:
            raise InputError(f"malformed row {reader.line_num}: {e}", path) from e
    return rows


def _parse_row(row: Mapping[str, str]) -> dict:
    out: dict[str, Any] = dict(row)
    for key in ("seed", "round", "labelled_images", "labelled_boxes", "pool_images", "selected_images", "selected_boxes"):
        out[key] = int(row[key])
    for key in ("map", "map50", "seconds"):
        out[key] = float(row[key])
    out["selected"] = [int(i) for i in row["selected"].split()] if row["selected"] else []
    return out


class ResultsWriter:
    """Appends rows to the results CSV, flushed and synced one by one."""

    def __init__(self, path: str | os.PathLike, rows: Sequence[dict]):
        self.path = Path(path)
        # rewrite what is complete (drops a torn line), then append
        with atomic_open(self.path) as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow(_format_row(row))

    def append(self, row: Mapping[str, Any]) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS, lineterminator="\n").writerow(_format_row(row))
            f.flush()
            os.fsync(f.fileno())


def _format_row(row: Mapping[str, Any]) -> dict:
    out = {k: row[k] for k in CSV_FIELDS}
    out["selected"] = " ".join(str(i) for i in row["selected"])
    out["map"], out["map50"] = f"{row['map']:.6f}", f"{row['map50']:.6f}"
    out["seconds"] = f"{row['seconds']:.1f}"
    return out


# --------------------------------------------------------------------------- summaries and plot


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[dict]]:
    """Per strategy, per round: mean labelled images and boxes, mean and std of mAP over seeds.

    Returns ``{strategy: [{"round", "images", "boxes", "map", "std", "n"}, ...]}`` by round;
    ``std`` is the sample standard deviation (0 for a single seed).
    """
    groups: dict[str, dict[int, list[Mapping[str, Any]]]] = {}
    for row in rows:
        groups.setdefault(row["strategy"], {}).setdefault(int(row["round"]), []).append(row)
    out: dict[str, list[dict]] = {}
    for strategy, rounds in groups.items():
        out[strategy] = []
        for r in sorted(rounds):
            maps = np.array([float(x["map"]) for x in rounds[r]])
            out[strategy].append(
                {
                    "round": r,
                    "images": float(np.mean([x["labelled_images"] for x in rounds[r]])),
                    "boxes": float(np.mean([x["labelled_boxes"] for x in rounds[r]])),
                    "map": float(maps.mean()),
                    "std": float(maps.std(ddof=1)) if len(maps) > 1 else 0.0,
                    "n": len(maps),
                }
            )
    return out


def plot_learning_curves(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> None:
    """Learning curves (mean +- std of bbox mAP over seeds vs labelled images) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    try:
        for strategy, points in summarise(rows).items():
            x = np.array([p["images"] for p in points])
            y = np.array([p["map"] for p in points])
            s = np.array([p["std"] for p in points])
            (line,) = ax.plot(x, y, marker="o", label=strategy)
            ax.fill_between(x, y - s, y + s, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel("labelled images")
        ax.set_ylabel("bbox mAP (COCO AP@[.5:.95])")
        ax.set_title(title or "learning curves (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png")
    finally:
        plt.close(fig)


def format_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """One table: per strategy and round, labelled images and mAP mean ± std."""
    summary = summarise(rows)
    lines = [f"{'strategy':<16} {'round':>5} {'images':>7} {'boxes':>7} {'mAP':>7} {'± std':>7} {'seeds':>5}"]
    for strategy, points in summary.items():
        for p in points:
            lines.append(
                f"{strategy:<16} {p['round']:>5} {p['images']:>7.1f} {p['boxes']:>7.1f} "
                f"{p['map']:>7.4f} {p['std']:>7.4f} {p['n']:>5}"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------- one round's parts


def _count_boxes(coco: Mapping[str, Any]) -> int:
    return len(coco.get("annotations", []))


def _evaluate(checkpoint: Path, config: Config, data: LoopData, device: str) -> dict[str, float]:
    from det_al.checkpoint import load_checkpoint
    from det_al.evaluation import evaluate_coco, predict

    model, _, categories, _ = load_checkpoint(checkpoint, config, device=device)
    results = predict(model, data.val, data.image_root, categories, device=device, batch_size=config.passes.batch_size)
    return evaluate_coco(data.val, results, ("bbox",))["bbox"]


def _needs_labelled_embeddings(strategy: str) -> bool:
    name, _, key = strategy.partition(":")
    return name == "diverse" or key == "novelty"


def labelled_embeddings(model: Any, coco: Mapping[str, Any], image_root: Path, device: str) -> np.ndarray:
    """Backbone embeddings ``[N, D]`` of a labelled COCO set (see :func:`det_al.novelty.embed_images`)."""
    from det_al.novelty import embed_images

    emb, _ = embed_images(model, coco, image_root, device=device)
    return emb


# --------------------------------------------------------------------------- the loop


class _Run:
    """One strategy and seed: the labelled set and the pool as they change."""

    def __init__(self, strategy: str, seed: int, data: LoopData):
        self.strategy, self.seed, self.data = strategy, seed, data
        self.labelled_ids = [int(im["id"]) for im in data.labelled["images"]]
        self.pool_ids = [int(im["id"]) for im in data.pool["images"]]
        self.added: list[int] = []

    def reveal(self, image_ids: Sequence[int]) -> None:
        """Move ``image_ids`` from the pool to the labelled set."""
        chosen = set(int(i) for i in image_ids)
        unknown = chosen - set(self.pool_ids)
        if unknown:
            raise InputError(f"selected image id {min(unknown)} is not in the pool")
        self.pool_ids = [i for i in self.pool_ids if i not in chosen]
        self.added.extend(int(i) for i in image_ids)

    def labelled(self) -> dict:
        """The labelled COCO set: the initial one plus the oracle's labels of what was added."""
        base = self.data.labelled
        added = subset(self.data.oracle, self.added)
        return {
            "images": list(base["images"]) + added["images"],
            "annotations": list(base.get("annotations", [])) + _renumber(added["annotations"], base),
            "categories": self.data.categories,
        }

    def pool(self) -> dict:
        return {**subset(self.data.pool, self.pool_ids), "annotations": []}


def _renumber(annotations: list[dict], base: Mapping[str, Any]) -> list[dict]:
    """Oracle annotations with ids that cannot collide with the labelled set's."""
    start = max([int(a.get("id", 0)) for a in base.get("annotations", [])] + [0]) + 1
    return [{**a, "id": start + k} for k, a in enumerate(annotations)]


def _train(
    config: Config, coco: dict, out_dir: Path, init: Path | None, data: LoopData, device: str, progress: bool,
    reuse: bool = False,
) -> Path:
    """Train (or, with ``reuse``, take a finished training in ``out_dir``); the last checkpoint."""
    from det_al.training import train_model

    done = out_dir / "train_summary.json"
    if reuse and done.exists():
        summary = read_json(done)
        if Path(summary.get("last", "")).exists():
            logger.info("reusing the finished training in %s", out_dir)
            return Path(summary["last"])
    train_json = out_dir / "labelled.json"
    write_json(train_json, coco)
    job = {
        "config": config, "train_json": train_json, "image_root": data.image_root, "out_dir": out_dir,
        "categories": data.categories, "init_checkpoint": init,
    }
    broadcast_from_main(job)  # under torchrun the other ranks train with this one (follow_training)
    summary = train_model(**job, device=device, progress=progress)
    last = Path(summary.get("last") or out_dir / "last.pt")
    write_json(done, {"last": os.fspath(last), "epochs": summary.get("epochs"), "seconds": summary.get("seconds")})
    return last


def follow_training(device: str) -> None:
    """Ranks > 0 under torchrun: train with rank 0, job after job, until it sends ``None``.

    Rank 0 runs the loop and broadcasts the arguments of each :func:`train_model` call before
    it makes it (in :func:`_train`), and ``None`` when the loop is done.
    """
    from det_al.training import train_model

    while (job := broadcast_from_main(None)) is not None:
        train_model(**job, device=device, progress=False)


def run_loop(
    config: Config,
    data: LoopData,
    out_dir: str | os.PathLike,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
    run_info: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Run every strategy and seed of ``config.loop`` for ``rounds`` selections.

    Writes ``out_dir/results.csv`` (one row per strategy, seed and round, appended as it goes),
    ``out_dir/learning_curve.png``, ``out_dir/loop.json`` (the settings) and the per-round
    training folders under ``out_dir/runs/``. With ``resume``, rows already in ``results.csv``
    are kept and their work is skipped; without it an existing ``results.csv`` is an error.

    Returns the paths ``results``, ``plot`` and ``settings``.

    Under torchrun every process calls this with the same arguments: each checks them (bad input
    stops every process with its message), then rank 0 runs the loop while the others follow
    its trainings (:func:`follow_training`). ``out_dir`` must be a folder every process reads:
    they read the labelled set that rank 0 writes there.
    """
    with process_group(device) as device:
        with fail_together():
            check_loop_config(config)
            paths, settings, rows = _results_so_far(config, out_dir, resume, run_info)
        barrier()  # rank 0 writes only after every rank has looked at the folder
        if not is_main():
            follow_training(device)
            return paths
        _run_rounds(config, data, paths, settings, rows, resume, device, progress)
        broadcast_from_main(None)  # the others stop following
    return paths


def _results_so_far(
    config: Config, out_dir: str | os.PathLike, resume: bool, run_info: Mapping[str, Any] | None
) -> tuple[dict[str, Path], dict, list[dict]]:
    """The output paths, the settings to record and the rows of an earlier run (with ``resume``)."""
    out = Path(out_dir)
    paths = {"results": out / "results.csv", "plot": out / "learning_curve.png", "settings": out / "loop.json"}
    settings = {"loop": config_to_dict(config)["loop"], **(run_info or {})}
    rows: list[dict] = []
    if paths["results"].exists():
        if not resume:
            raise InputError("results.csv exists: pass --resume to continue it, or choose another --out", out)
        rows = read_rows(paths["results"])
        if paths["settings"].exists():
            before = read_json(paths["settings"]).get("loop", {})
            for key in _FIXED_ON_RESUME:
                if key in before and before[key] != settings["loop"][key]:
                    raise InputError(
                        f"cannot resume with loop.{key}={settings['loop'][key]!r}: the run used {before[key]!r}",
                        paths["settings"],
                    )
    return paths, settings, rows


def _run_rounds(
    config: Config,
    data: LoopData,
    paths: Mapping[str, Path],
    settings: Mapping[str, Any],
    rows: list[dict],
    resume: bool,
    device: str,
    progress: bool,
) -> None:
    """The rounds of every strategy and seed (rank 0's part of :func:`run_loop`)."""
    from det_al.checkpoint import load_checkpoint
    from det_al.scoring import score_pool

    out = paths["results"].parent
    out.mkdir(parents=True, exist_ok=True)
    write_json(paths["settings"], settings, indent=1)
    writer = ResultsWriter(paths["results"], rows)
    done = {(r["strategy"], r["seed"], r["round"]): r for r in rows}
    budget, budget_boxes = budgets(config)
    loop = config.loop
    shared: dict[tuple[int, Any], Any] = {}  # round 0 of a seed: metrics and pool scores, shared by strategies
    trained: set[Path] = set()

    for seed in loop.seeds:
        for strategy in loop.strategies:
            run = _Run(strategy, seed, data)
            previous: Path | None = None
            for r in range(loop.rounds + 1):
                if (strategy, seed, r) in done:
                    run.reveal(done[(strategy, seed, r)]["selected"])
                    continue
                t0 = time.monotonic()
                folder = _round_folder(out, strategy, seed, r)
                round_config = _round_config(config, seed, r)
                init = None
                if loop.retrain == "finetune" and r > 0:
                    previous = previous or _round_checkpoint(out, strategy, seed, r - 1)
                    init = previous if previous is not None and previous.exists() else None
                    if init is None:
                        logger.warning("no checkpoint of round %d to fine-tune from: training from scratch", r - 1)
                labelled = run.labelled()
                # a finished training is reused on --resume, and for the shared round 0
                checkpoint = _train(round_config, labelled, folder, init, data, device, progress, reuse=resume or folder in trained)
                trained.add(folder)
                previous = checkpoint
                if r == 0 and (seed, "metrics") in shared:
                    metrics = shared[(seed, "metrics")]
                else:
                    metrics = _evaluate(checkpoint, round_config, data, device)
                    if r == 0:
                        shared[(seed, "metrics")] = metrics
                chosen: list[dict] = []
                if r < loop.rounds and run.pool_ids:
                    model, _, categories, _ = load_checkpoint(checkpoint, round_config, device=device)
                    key = (seed, r)
                    if r == 0 and key in shared:
                        scores = shared[key]
                    else:
                        scores = score_pool(model, round_config, categories, run.pool(), data.image_root, device=device, progress=progress)
                        if r == 0:
                            shared[key] = scores
                    chosen = _select(strategy, scores, model, labelled, data, budget, budget_boxes, seed * 1000 + r, loop.pre_factor, device)
                selected = [int(c["image_id"]) for c in chosen]
                revealed = subset(data.oracle, selected)
                row = {
                    "strategy": strategy,
                    "seed": seed,
                    "round": r,
                    "labelled_images": len(labelled["images"]),
                    "labelled_boxes": _count_boxes(labelled),
                    "map": max(metrics["AP"], 0.0),
                    "map50": max(metrics["AP50"], 0.0),
                    "pool_images": len(run.pool_ids),
                    "selected_images": len(selected),
                    "selected_boxes": _count_boxes(revealed),
                    "selected_domains": _domains(revealed),
                    "seconds": time.monotonic() - t0,
                    "selected": selected,
                }
                writer.append(row)
                rows.append(row)
                run.reveal(selected)
                logger.info(
                    "%s seed %d round %d: %d labelled images, mAP %.4f; selected %d (%s)",
                    strategy, seed, r, row["labelled_images"], row["map"], len(selected), row["selected_domains"],
                )
            plot_learning_curves(rows, paths["plot"])
    plot_learning_curves(rows, paths["plot"])


def _round_folder(out: Path, strategy: str, seed: int, r: int) -> Path:
    """The training folder of a round; round 0 is the same for every strategy of a seed."""
    if r == 0:
        return out / "runs" / f"seed{seed}" / "round0"
    return out / "runs" / strategy.replace(":", "-").replace("/", "-") / f"seed{seed}" / f"round{r}"


def _round_config(config: Config, seed: int, r: int) -> Config:
    """The config of one round: its own training seed, the run's dropout seed, and the
    fine-tuning epochs and learning rate after round 0 when ``loop.retrain`` is ``finetune``."""
    loop = config.loop
    train = dataclasses.replace(config.train, seed=seed * 1000 + r)
    if loop.retrain == "finetune" and r > 0:
        if loop.finetune_epochs > 0:
            train = dataclasses.replace(train, epochs=loop.finetune_epochs)
        if loop.finetune_lr > 0:
            train = dataclasses.replace(train, lr=loop.finetune_lr)
    return dataclasses.replace(config, train=train, passes=dataclasses.replace(config.passes, seed=seed))


def _round_checkpoint(out: Path, strategy: str, seed: int, r: int) -> Path | None:
    folder = _round_folder(out, strategy, seed, r)
    done = folder / "train_summary.json"
    if done.exists():
        return Path(read_json(done).get("last", folder / "last.pt"))
    return folder / "last.pt" if (folder / "last.pt").exists() else None


def _domains(coco: Mapping[str, Any]) -> str:
    """``"drifted:3 old:7"`` when images carry a ``domain`` key (the synthetic data do)."""
    counts: dict[str, int] = {}
    for im in coco["images"]:
        if "domain" in im:
            counts[str(im["domain"])] = counts.get(str(im["domain"]), 0) + 1
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items()))


def _select(
    strategy: str,
    scores: Any,
    model: Any,
    labelled: dict,
    data: LoopData,
    budget: int | None,
    budget_boxes: int | None,
    seed: int,
    pre_factor: float,
    device: str,
) -> list[dict]:
    """Run one strategy on a scored pool, with the context it needs."""
    from det_al.novelty import add_novelty

    records = scores.records
    if not records:
        return []
    context: dict[str, Any] = {
        "seed": seed,
        "pre_factor": pre_factor,
        "embeddings": np.asarray(scores.embeddings, dtype=np.float32),
        "embedding_ids": list(scores.embedding_ids),
        "image_classes": classes_from_annotations(scores.annotations),
    }
    if _needs_labelled_embeddings(strategy):
        context["labelled_embeddings"] = labelled_embeddings(model, labelled, data.image_root, device)
        records = add_novelty(records, context["embeddings"], context["embedding_ids"], context["labelled_embeddings"])
    return get_strategy(strategy)(records, budget, budget_boxes, **context)


def label_efficiency(rows: Sequence[Mapping[str, Any]], reference: str = "random") -> dict[str, dict[str, Any]]:
    """How many labelled images each strategy needs to reach the reference's final mAP.

    For each strategy, the mean curve (labelled images -> mean mAP) is walked until it first
    reaches the reference strategy's final-round mean mAP; the crossing is linearly interpolated
    between the two rounds around it. Returns ``{strategy: {"images", "percent" (of the
    reference's final labelled images), "reached", "below_rounds" (rounds where the strategy's
    mean is below the reference's by more than one std: the larger of the two strategies' stds
    over seeds at that round), "meaningful"}}``; ``images`` is None when the target is never
    reached. ``acquired_percent`` counts only the images added after round 0 (the initial
    labelled set is the same for everyone). ``meaningful`` is False when the reference's final mean mAP is not above its first
    round's: then every curve "reaches" the target at once and the percentages say nothing.
    """
    summary = summarise(rows)
    if reference not in summary:
        return {}
    ref = summary[reference]
    target, ref_images, start = ref[-1]["map"], ref[-1]["images"], ref[0]["images"]
    meaningful = len(ref) > 1 and target > ref[0]["map"]
    ref_by_round = {p["round"]: p for p in ref}
    out: dict[str, dict[str, Any]] = {}
    for strategy, points in summary.items():
        images = None
        for a, b in zip([None] + points[:-1], points):
            if b["map"] >= target:
                if a is None or b["map"] == a["map"]:
                    images = b["images"]
                else:
                    images = a["images"] + (target - a["map"]) / (b["map"] - a["map"]) * (b["images"] - a["images"])
                break
        below = [
            p["round"]
            for p in points
            if p["round"] in ref_by_round
            and p["map"] < ref_by_round[p["round"]]["map"] - max(ref_by_round[p["round"]]["std"], p["std"])
        ]
        out[strategy] = {
            "images": images,
            "percent": None if images is None or ref_images == 0 else 100.0 * images / ref_images,
            "acquired_percent": None
            if images is None or ref_images == start
            else 100.0 * (images - start) / (ref_images - start),
            "reached": images is not None,
            "below_rounds": below,
            "meaningful": meaningful,
        }
    return out


def format_efficiency(efficiency: Mapping[str, Mapping[str, Any]], reference: str = "random") -> str:
    lines = [f"label efficiency: labelled images to reach {reference}'s final-round mAP"]
    if efficiency and not next(iter(efficiency.values()))["meaningful"]:
        lines[0] += f" (not meaningful: {reference}'s final mAP is not above its first round's)"
    for strategy, e in efficiency.items():
        percent = "n/a" if e["percent"] is None else f"{e['percent']:.0f}%"
        acquired = "n/a" if e["acquired_percent"] is None else f"{e['acquired_percent']:.0f}%"
        reached = (
            f"{e['images']:.1f} images ({percent} of {reference}'s; {acquired} of its acquired images)"
            if e["reached"]
            else "never"
        )
        below = ", ".join(str(r) for r in e["below_rounds"]) or "none"
        lines.append(f"  {strategy:<16} {reached}; rounds below {reference} by > 1 std: {below}")
    return "\n".join(lines)
