"""The simulated loop: config checks, revealing oracle labels, end to end with resume."""

import pytest

from det_al.config import config_from_dict
from det_al.errors import InputError
from det_al.loop.data import LoopRun, check_loop_config
from det_al.loop.results import read_rows


def test_run_reveals_oracle_labels_with_fresh_ids(loop_data):
    run = LoopRun("top", 0, loop_data())
    run.reveal([3])
    labelled = run.labelled()
    assert [im["id"] for im in labelled["images"]] == [1, 3]
    assert [a["id"] for a in labelled["annotations"]] == [9, 10, 11]
    assert [im["id"] for im in run.pool()["images"]] == [2]
    with pytest.raises(InputError, match="not in the pool"):
        run.reveal([3])


@pytest.mark.parametrize(
    "loop, message",
    [
        ({"strategies": ["best"]}, "unknown strategy"),
        ({"retrain": "warm"}, "retrain"),
        ({"budget": 0}, "budget"),
        ({"seeds": []}, "seeds"),
        ({"strategies": ["top", "top"]}, "repeat"),
    ],
)
def test_loop_config_checks(loop, message):
    with pytest.raises(InputError, match=message):
        check_loop_config(config_from_dict({"loop": loop}))


def test_bad_train_section_stops_the_loop_before_it_writes(loop_data, tmp_path):
    from det_al.loop.rounds import run_loop

    config = config_from_dict({"model": {"name": "fasterrcnn_tiny", "num_classes": 2}, "train": {"batchnorm": "bogus"}})
    with pytest.raises(InputError, match="train.batchnorm must be one of auto, train, frozen, sync, got 'bogus'"):
        run_loop(config, loop_data(), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # a fixed config then runs without --resume


def test_loop_quick_end_to_end_and_resume(tmp_path, capsys):
    """`det-al loop --quick` on synthetic drift data, then a resume after a simulated crash."""
    from det_al.cli import main
    from det_al.data.synthetic import make_demo_data

    paths = make_demo_data(tmp_path / "data", seed=0, n_train=4, n_val=4, n_pool=8)
    config = tmp_path / "config.yaml"
    config.write_text(
        "model: {name: fasterrcnn_tiny, num_classes: 4, options: {min_size: 128, max_size: 128}}\n"
        "train: {optimizer: adamw, lr: 0.002}\n"
        "passes: {dropout: 0.3}\n"
        "loop: {strategies: [random, diverse], budget: 5}\n"
    )
    out = tmp_path / "loop"
    argv = [
        "loop", str(config), "--labelled", str(paths["train"]), "--pool", str(paths["pool"]),
        "--oracle", str(paths["oracle"]), "--val", str(paths["val"]), "--image-root", str(paths["image_root"]),
        "--out", str(out), "--quick", "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    # labels are counted as added beyond the shared start (2 per strategy here), not as labelled
    assert "label efficiency against random (labels added beyond the shared start" in printed
    random_row = [line.split() for line in printed.splitlines() if line.strip().startswith("random ")][-1]
    if "not meaningful" in printed:  # one epoch's model may stay at mAP 0: nothing to reach
        assert random_row[:2] == ["random", "-"]
    else:  # random reaches its own final mAP with the 2 labels it added
        assert random_row[:3] == ["random", "2.0", "(100%)"]
    rows = read_rows(out / "results.csv")
    assert [(r["strategy"], r["round"]) for r in rows] == [("random", 0), ("random", 1), ("diverse", 0), ("diverse", 1)]
    assert (out / "learning_curve.png").stat().st_size > 1000
    oracle_boxes = {}
    import json

    for a in json.loads(paths["oracle"].read_text())["annotations"]:
        oracle_boxes[a["image_id"]] = oracle_boxes.get(a["image_id"], 0) + 1
    for first, second in (rows[0:2], rows[2:4]):
        assert first["labelled_images"] == 4 and second["labelled_images"] == 6  # quick budget: 2 images
        assert len(first["selected"]) == 2 and second["selected"] == []
        assert first["selected_boxes"] == sum(oracle_boxes.get(i, 0) for i in first["selected"])
        assert second["labelled_boxes"] == first["labelled_boxes"] + first["selected_boxes"]
    assert rows[0]["map"] == rows[2]["map"]  # round 0 is shared by the strategies of a seed

    # an existing run needs --resume
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err

    # crash after three rows, with a torn fourth: resume redoes only the last round
    lines = (out / "results.csv").read_text().splitlines(keepends=True)
    (out / "results.csv").write_text("".join(lines[:4]) + lines[4][:10])
    assert main(argv + ["--resume"]) == 0
    again = read_rows(out / "results.csv")
    assert [(r["strategy"], r["round"], r["selected"], r["labelled_images"]) for r in again] == [
        (r["strategy"], r["round"], r["selected"], r["labelled_images"]) for r in rows
    ]


def test_command_options_become_loop_settings(tmp_path):
    import argparse

    from det_al.cli.loop import add_arguments, overrides
    from det_al.config import load_config
    from det_al.loop.data import budgets, quick_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    common = ["cfg.yaml", "--labelled", "l", "--pool", "p", "--oracle", "o", "--val", "v", "--out", "x"]
    args = parser.parse_args(common + ["--strategies", "random,top:class", "--rounds", "2", "--budget-boxes", "30", "--seeds", "3,4", "--retrain", "finetune"])
    config = load_config(None, overrides(args))
    assert config.loop.strategies == ("random", "top:class") and config.loop.seeds == (3, 4)
    assert config.loop.rounds == 2 and config.loop.retrain == "finetune"
    assert budgets(config) == (None, 30)
    quick = quick_config(config)
    assert quick.loop.seeds == (3,) and quick.loop.rounds == 1 and budgets(quick) == (None, 6)
    assert quick.train.epochs == 1 and quick.passes.passes == 2
    args = parser.parse_args(common + ["--budget", "7"])
    assert budgets(load_config(None, overrides(args))) == (7, None)
    with pytest.raises(SystemExit):
        parser.parse_args(common + ["--budget", "7", "--budget-boxes", "3"])


def test_fused_strategy_gets_novelty_and_the_fusion_settings(loop_data):
    import numpy as np

    from det_al.loop import rounds as loop
    from det_al.scores import Scores

    # scored with the labelled set on image 2 (score_images(labelled=...)): image 3 is novel
    records = [{"image_id": 2, "informativeness": 0.9, "n_objects": 1, "novelty": 0.0, "rank": 1},
               {"image_id": 3, "informativeness": 0.1, "n_objects": 1, "novelty": 0.5, "rank": 2}]
    scores = Scores(records, {"categories": [], "images": [], "annotations": []},
                    embeddings=np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), embedding_ids=[2, 3],
                    labelled_embeddings=np.array([[1.0, 0.0]]))
    pick = lambda weights: loop._select("fused", scores, loop_data(), 1, None, 0, 3.0,  # noqa: E731
                                        fusion_weights=weights, fusion_k=60.0)
    assert [r["image_id"] for r in pick({"informativeness": 1, "novelty": 3})] == [3]
    assert [r["image_id"] for r in pick({"informativeness": 3, "novelty": 1})] == [2]
    # default weights 1 and 1: both images get 1/61 + 1/62, the tie keeps the ranking order
    (chosen,) = pick(None)
    assert chosen["image_id"] == 2 and chosen["novelty"] == 0.0


def test_loop_scores_with_the_labelled_set_only_for_strategies_that_need_it():
    from det_al.loop.rounds import _needs_labelled

    assert [_needs_labelled(s) for s in ("fused", "diverse", "top:novelty", "top", "random", "top:box")] == [
        True, True, True, False, False, False]
    assert [_needs_labelled(s) for s in ("class-balanced", "class-balanced:fused", "switch:fused", "typical")] == [
        True, True, True, True]


def test_finetune_rounds_use_their_own_warmup_and_round_zero_the_train_one():
    from det_al.loop.rounds import _round_config

    config = config_from_dict(
        {
            "train": {"epochs": 12, "lr": 0.002, "warmup_iters": 20},
            "loop": {"retrain": "finetune", "finetune_epochs": 5, "finetune_lr": 0.0005},
        }
    )
    first, later = _round_config(config, 3, 0).train, _round_config(config, 3, 2).train
    assert (first.epochs, first.lr, first.warmup_iters, first.seed) == (12, 0.002, 20, 3000)
    assert (later.epochs, later.lr, later.warmup_iters, later.seed) == (5, 0.0005, 0, 3002)
    custom = dataclasses_replace_loop(config, finetune_warmup_iters=4)
    assert _round_config(custom, 3, 1).train.warmup_iters == 4


def dataclasses_replace_loop(config, **changes):
    import dataclasses

    return dataclasses.replace(config, loop=dataclasses.replace(config.loop, **changes))


@pytest.mark.parametrize(
    "loop, message",
    [
        ({"finetune_warmup_iters": -1}, "finetune_warmup_iters"),
        ({"pseudo_threshold": 0}, "pseudo_threshold"),
        ({"pseudo_threshold": 0.5, "pseudo_ignore": 0.6}, "pseudo_ignore"),
    ],
)
def test_self_training_and_warmup_checks(loop, message):
    with pytest.raises(InputError, match=message):
        check_loop_config(config_from_dict({"loop": loop}))
