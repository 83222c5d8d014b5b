"""``det-al score``: rank a pool of images by informativeness."""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from det_al.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", "-k", required=True, help="det_al checkpoint (or a torchvision state dict with --config)")
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
    from det_al.models.checkpoint import load_checkpoint
    from det_al.config import load_config, override_config
    from det_al.scoring.distributed import rank_device, world_info
    from det_al.data.files import remove_earlier_outputs
    from det_al.results.stream import SHARDS, file_sha256, refuse_existing_results
    from det_al.models.build import model_num_classes
    from det_al.scoring.score_pool import score_to_dir
    from det_al.data.sources import load_pool, resolve_categories
    from det_al.scoring.score_pool import check_model

    out_dir = Path(args.out)
    if args.resume and args.overwrite:
        raise InputError("--resume and --overwrite exclude each other (continue the run in --out, or start it over)")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("output path exists and is not a folder", out_dir)
    if not args.resume and not args.overwrite:  # before anything is written (a folder pool's pool.json)
        refuse_existing_results(out_dir)
    rank, world, local_rank = world_info()
    device = rank_device(args.device, local_rank) if world > 1 else args.device
    # Cheap checks first: a bad config or pool fails before the model is loaded.
    config = load_config(args.config, _overrides(args)) if args.config else None
    source = load_pool(args.pool, args.image_root, save_folder_pool=out_dir / "pool.json" if rank == 0 else None,
                       allow_outside_root=args.allow_outside_root)
    pool, image_root = source.pool, source.image_root
    if config is not None:
        # a plain state dict with num_classes left out takes the class count from the pool's categories
        given = (pool.get("categories") or None) if config.model.num_classes is None else None
        model, config, categories, _ = load_checkpoint(args.checkpoint, config, device=device, categories=given)
    else:
        model, config_ck, categories, _ = load_checkpoint(args.checkpoint, None, device=device)
        config = override_config(config_ck, _overrides(args), args.checkpoint)
        if dataclasses.asdict(config.model) != dataclasses.asdict(config_ck.model):
            raise InputError("--set cannot change the model section of a checkpoint's config")
    try:
        check_model(model)
    except InputError as e:
        raise InputError(str(e), args.checkpoint) from e
    # the checkpoint's categories, else the pool's, else class_1 ...: checked against the model
    categories = resolve_categories(categories or None, model_num_classes(model), pool.get("categories"), args.checkpoint)
    checkpoint_sha = file_sha256(args.checkpoint)
    import torch

    labelled = None
    if args.labelled:
        if world > 1 or args.num_shards > 1:
            raise InputError("--labelled cannot be combined with --num-shards or torchrun yet: score without it, "
                             "then run det-al select --strategy diverse with --labelled-embeddings")
        labelled = labelled_embeddings(args.labelled, args.labelled_root, model, device, args.allow_outside_root)

    # Recorded because CPU results depend on it in the last bits (see README, "Large pools").
    info = {"checkpoint": os.fspath(args.checkpoint), "pool": os.fspath(args.pool),
            "device": device, "threads_per_process": torch.get_num_threads()}
    start = time.perf_counter()
    if world > 1:
        return _run_distributed(args, model, config, categories, pool, image_root, out_dir, checkpoint_sha, device, rank, world, info)
    if args.overwrite:  # a torchrun run's shards would sit beside this run's results
        remove_earlier_outputs([out_dir / SHARDS])
    counts = score_to_dir(
        model, config, categories, pool, image_root, out_dir, checkpoint_sha,
        resume=args.resume, overwrite=args.overwrite, num_shards=args.num_shards, shard_index=args.shard_index,
        device=device, amp=args.amp, progress=not args.no_progress,
        assemble=args.num_shards == 1, run_info={**info, **({"labelled": args.labelled} if labelled is not None else {})},
        labelled_embeddings=labelled, allow_outside_root=args.allow_outside_root,
    )
    if labelled is not None:  # beside the ranking, for det-al select --strategy diverse
        import numpy as np

        from det_al.data.files import atomic_open

        with atomic_open(out_dir / "labelled_embeddings.npy", "wb") as f:
            np.save(f, labelled)
    seconds = time.perf_counter() - start
    if args.num_shards > 1:
        print(f"scored shard {args.shard_index} of {args.num_shards} ({counts['n_shard']} images) in {seconds:.1f} s -> {out_dir}")
        print("join the shards with: det-al merge-shards SHARD_DIR ... --out DIR")
        return 0
    _print_summary(out_dir, counts, seconds)
    return 0


def labelled_embeddings(path: str, root: str | None, model, device: str, allow_outside_root: bool = False):
    """The labelled set's embeddings ``[M, D]`` (:func:`det_al.scoring.novelty.embed_images`)."""
    from det_al.data.coco import load_coco
    from det_al.data.images import check_file_names, check_image_root
    from det_al.scoring.novelty import embed_images

    coco = load_coco(path)
    if not coco["images"]:
        raise InputError("the labelled set has no images", path)
    image_root = Path(root) if root else Path(path).parent
    check_image_root(image_root)
    check_file_names(coco["images"], image_root, path, allow_outside_root)
    emb, ids = embed_images(model, coco, image_root, device=device)
    if not len(ids):
        raise InputError("none of the labelled set's images could be read (check --labelled-root)", path)
    return emb


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
    (:data:`det_al.scoring.distributed.WAIT`): ranks finish their shards at different times, and rank 0's
    merge of a large pool takes a while; an error in the merge is reported by every rank.
    """
    from det_al.scoring import distributed
    from det_al.data.files import remove_earlier_outputs
    from det_al.results.stream import DONE, KEY, RESULTS, SHARDS
    from det_al.scoring.score_pool import score_to_dir
    from det_al.results.shards import merge_shards

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
            allow_outside_root=args.allow_outside_root,
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
