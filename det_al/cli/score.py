"""``det-al score``: rank a pool of images by informativeness."""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from det_al.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", "-k", help="det_al checkpoint (or a torchvision state dict with --config)")
    model.add_argument("--checkpoints", nargs="+", metavar="CHECKPOINT",
                       help="an ensemble: checkpoints of one family and one class list (e.g. trained with different "
                            "seeds); each runs the passes, all their passes are scored together; the pseudo-labels "
                            "and embeddings are the first one's (docs/scoring.md)")
    parser.add_argument("--config", "-c", help="YAML config; default: the one stored in the checkpoint")
    parser.add_argument("--pool", "-p", required=True, help="COCO JSON of the pool, or a folder of images")
    parser.add_argument("--image-root", "-r", help="folder the pool's file_name entries are relative to (default: the pool file's folder)")
    parser.add_argument("--out", "-o", required=True, help="output folder")
    parser.add_argument("--passes", type=int, help="stochastic passes per view (passes.passes)")
    parser.add_argument("--dropout", help="dropout rate, or comma-separated rates, one per pass")
    parser.add_argument("--tta", help="comma-separated test-time views, e.g. hflip,scale:0.8")
    parser.add_argument("--seed", type=int, help="seed of the dropout masks (passes.seed)")
    parser.add_argument("--batch-size", type=int, help="images per batch (passes.batch_size)")
    parser.add_argument("--workers", type=int, help="DataLoader workers decoding images (passes.num_workers)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    parser.add_argument("--plain", action="store_true", help="run the whole model once per pass (slow; for comparison)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. --set matching.iou_threshold=0.6")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out (same checkpoint, config and pool)")
    parser.add_argument("--overwrite", action="store_true", help="discard the results already in --out and start over")
    parser.add_argument("--num-shards", type=int, default=1, help="split the pool into N shards (job arrays); join them with det-al merge-shards")
    parser.add_argument("--shard-index", type=int, default=0, help="which shard this job scores, 0..N-1")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="read file_name entries that lie outside --image-root (absolute paths, ../)")
    parser.add_argument("--reference", metavar="SCORES",
                        help="an earlier det-al score folder: rank these images against that pool, so their "
                             "informativeness compares with its values (a new batch, a few images)")
    parser.add_argument("--labelled", help="COCO JSON of the labelled (training) set: each ranked image gets its novelty "
                                           "(distance to it); enables --strategy fused in det-al select")
    parser.add_argument("--labelled-root", help="folder the labelled set's file_name entries are relative to "
                                                "(default: the labelled file's folder)")


def _overrides(args: argparse.Namespace) -> list[str]:
    from det_al.config import passes_overrides

    return passes_overrides(
        passes=args.passes, dropout=args.dropout, tta=args.tta, seed=args.seed, batch_size=args.batch_size,
        num_workers=args.workers, fast=False if args.plain else None,
    ) + list(args.overrides)


def run(args: argparse.Namespace) -> int:
    import det_al
    from det_al.data.sources import load_pool
    from det_al.run.distributed import rank_device, world_info

    out_dir = Path(args.out)
    if args.resume and args.overwrite:
        raise InputError("--resume and --overwrite exclude each other (continue the run in --out, or start it over)")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("output path exists and is not a folder", out_dir)
    rank, world, local_rank = world_info()
    device = rank_device(args.device, local_rank) if world > 1 else args.device
    source = load_pool(args.pool, args.image_root)
    paths = checkpoint_paths(args)
    loaded = _load_members(args, paths, source.pool.get("categories"), device)
    info = {"checkpoint": os.fspath(paths[0])}
    if len(paths) > 1:
        info["checkpoints"] = [os.fspath(p) for p in paths]
    start = time.perf_counter()
    if world > 1 or args.num_shards > 1:
        return _run_shard(args, loaded, source, out_dir, device, rank, world, info, start)
    scores = det_al.score_images(
        loaded, source, device=device, labelled=args.labelled, labelled_root=args.labelled_root, out_dir=out_dir,
        resume=args.resume, overwrite=args.overwrite, amp=args.amp, progress=not args.no_progress,
        allow_outside_root=args.allow_outside_root, extra_info=info, reference=args.reference,
    )
    _print_summary(out_dir, scores.run, time.perf_counter() - start)
    return 0


def checkpoint_paths(args: argparse.Namespace) -> list[str]:
    """``--checkpoints``, or ``--checkpoint`` as a one-member list."""
    return list(args.checkpoints) if args.checkpoints else [args.checkpoint]


def _load_members(args: argparse.Namespace, paths: list[str], pool_categories: list[dict] | None, device: str):
    """The run's :class:`~det_al.api.LoadedModel` (one checkpoint) or list of them (an ensemble,
    checked to share family, classes and category names before any image is read; the run's
    config and categories are the first checkpoint's)."""
    import logging

    from det_al.config import config_to_dict
    from det_al.run.ensemble import check_members

    members = [_load_model(args, path, pool_categories, device) for path in paths]
    if len(members) == 1:
        return members[0]
    check_members([m.model for m in members], paths, [m.categories for m in members], members[0].config.passes.sites)
    def scoring_sections(config) -> dict:  # what decides the scores besides the weights
        return {k: v for k, v in config_to_dict(config).items() if k in ("passes", "matching", "scoring")}

    first = scoring_sections(members[0].config)
    for path, member in zip(paths[1:], members[1:]):
        if scoring_sections(member.config) != first:
            logging.getLogger(__name__).warning(
                "%s: its stored passes/matching/scoring config differs from %s's; the ensemble uses %s's",
                path, paths[0], paths[0])
    return members


def _load_model(args: argparse.Namespace, path: str, pool_categories: list[dict] | None, device: str):
    """The checkpoint's model, config (``--config``, ``--set``, the passes options) and categories."""
    from det_al.api import LoadedModel
    from det_al.config import load_config, override_config
    from det_al.models.checkpoint import load_checkpoint

    config = load_config(args.config, _overrides(args)) if args.config else None  # a bad config fails first
    if config is not None:
        # a plain state dict with num_classes left out takes the class count from the pool's categories
        given = (pool_categories or None) if config.model.num_classes is None else None
        model, config, categories, _ = load_checkpoint(path, config, device=device, categories=given)
    else:
        model, config_ck, categories, _ = load_checkpoint(path, None, device=device)
        config = override_config(config_ck, _overrides(args), path)
        if dataclasses.asdict(config.model) != dataclasses.asdict(config_ck.model):
            raise InputError("--set cannot change the model section of a checkpoint's config")
    return LoadedModel(model, config, categories or None)


def _run_shard(args, loaded, source, out_dir: Path, device: str, rank: int, world: int, info: dict, start: float) -> int:
    """A job-array shard (``--num-shards``) or a torchrun rank: the run package's entry, without
    assembly for a shard (``det-al merge-shards`` joins them)."""
    from det_al.run.info import run_info
    from det_al.data.files import remove_earlier_outputs, write_json
    from det_al.run.checks import check_run
    from det_al.run.ensemble import members_sha256
    from det_al.run.pool_run import score_to_dir
    from det_al.run.stream import SHARDS, file_sha256, refuse_existing_results

    if args.reference:
        raise InputError("--reference cannot be combined with --num-shards or torchrun yet: score the shards "
                         "without it (their merged run.json keeps the pool's own reference)")
    if args.labelled:
        raise InputError("--labelled cannot be combined with --num-shards or torchrun yet: score without it, "
                         "then run det-al select --strategy diverse with --labelled-embeddings")
    if not args.resume and not args.overwrite:  # before anything is written (a folder pool's pool.json)
        refuse_existing_results(out_dir)
    members = loaded if isinstance(loaded, list) else [loaded]
    model, config, categories = members[0]
    models = [m.model for m in members] if len(members) > 1 else model
    paths = checkpoint_paths(args)
    categories = check_run(model, source.pool["images"], source.image_root, categories=categories,
                           pool_categories=source.pool.get("categories"), allow_outside_root=args.allow_outside_root,
                           pool_source=source.path, categories_source=paths[0], passes=config.passes)
    if source.folder_coco is not None and rank == 0:
        write_json(out_dir / "pool.json", source.folder_coco, indent=1)
    info = {**info, **run_info(source, device, members=len(members))}
    checkpoint_sha = members_sha256([file_sha256(path) for path in paths])
    if world > 1:
        return _run_distributed(args, models, config, categories, source.pool, source.image_root, out_dir, checkpoint_sha,
                                device, rank, world, info)
    if args.overwrite:  # a torchrun run's shards would sit beside this run's results
        remove_earlier_outputs([out_dir / SHARDS])
    counts = score_to_dir(
        models, config, categories, source.pool, source.image_root, out_dir, checkpoint_sha,
        resume=args.resume, overwrite=args.overwrite, num_shards=args.num_shards, shard_index=args.shard_index,
        device=device, amp=args.amp, progress=not args.no_progress, assemble=False, run_info=info,
    )
    seconds = time.perf_counter() - start
    print(f"scored shard {args.shard_index} of {args.num_shards} ({counts['n_shard']} images) in {seconds:.1f} s -> {out_dir}")
    print("join the shards with: det-al merge-shards SHARD_DIR ... --out DIR")
    return 0


def _print_summary(out_dir: Path, counts: dict, seconds: float) -> None:
    import json

    n = counts["n_scored"]
    print(f"scored {n} images in {seconds:.1f} s ({seconds / max(n, 1):.3f} s/image); "
          f"skipped {counts['n_skipped']}, certain {counts['n_certain']}, nothing detected {counts['n_empty']}")
    with open(out_dir / "ranking.jsonl", encoding="utf-8") as f:
        for _, line in zip(range(10), f):
            r = json.loads(line)
            print(f"  #{r['rank']:<4d} {r['informativeness']:.3f}  {r['file_name']}  ({r['n_objects']} objects)")
    print(f"wrote {out_dir}/ranking.jsonl, pseudo_labels.json, passes.jsonl, skipped.json")


def _run_distributed(args, model, config, categories, pool, image_root, out_dir, checkpoint_sha, device, rank, world, info) -> int:
    """One torchrun rank: score shard ``rank`` of ``world``; rank 0 merges when all are done.

    A rank that fails while scoring (bad image root, full disk) prints its one line and exits;
    torchrun then stops the others at once, their results kept for ``--resume``, rather than
    letting them score for hours first. The process group waits up to a day in a collective
    (:data:`det_al.run.distributed.WAIT`): ranks finish their shards at different times, and rank 0's
    merge of a large pool takes a while; an error in the merge is reported by every rank.
    """
    from det_al.data.files import remove_earlier_outputs
    from det_al.run import distributed
    from det_al.run.pool_run import score_to_dir
    from det_al.run.shards import merge_shards
    from det_al.run.stream import DONE, KEY, RESULTS, SHARDS

    if args.num_shards != 1:
        raise InputError("--num-shards cannot be combined with torchrun: each rank is one shard")
    if args.overwrite and rank == 0:  # a one-process run's results would sit beside the merged ones
        remove_earlier_outputs(out_dir / name for name in (RESULTS, KEY, DONE))
    with distributed.process_group(device) as device:
        shard_dir = out_dir / SHARDS / f"rank-{rank}-of-{world}"
        start = time.perf_counter()
        score_to_dir(
            model, config, categories, pool, image_root, shard_dir, checkpoint_sha,
            resume=args.resume, overwrite=args.overwrite, num_shards=world, shard_index=rank, device=device, amp=args.amp,
            progress=not args.no_progress and rank == 0, assemble=False, run_info=info,
        )
        try:
            distributed.barrier()  # every shard is finished before rank 0 merges
        except RuntimeError as e:  # another rank is gone: its own line says why
            raise InputError(
                f"rank {rank}: another process of this torchrun job stopped "
                f"({' '.join(str(e).split())[:120]}); fix what it reported and run again with --resume"
            ) from e
        with distributed.fail_together():
            if rank == 0:
                dirs = [out_dir / SHARDS / f"rank-{r}-of-{world}" for r in range(world)]
                counts = merge_shards(dirs, out_dir, {**info, "world_size": world})
                _print_summary(out_dir, counts, time.perf_counter() - start)
    return 0
