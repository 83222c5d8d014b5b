"""Selection: ranking + pseudo-labels -> selection.json, on the hand-written scored pool
(``hand_scores`` in conftest.py)."""

from __future__ import annotations

import json

import pytest

from det_al.cli import main
from det_al.errors import InputError
from det_al.selection.files import read_ranking, select_batch


def test_top_takes_the_most_informative_whatever_the_order(hand_scores):
    shuffled = [hand_scores.ranking[2], hand_scores.ranking[0], hand_scores.ranking[1]]
    assert [im["id"] for im in select_batch(shuffled, hand_scores.pseudo_labels(), 2)["images"]] == [11, 10]
    assert [im["id"] for im in select_batch(shuffled, hand_scores.pseudo_labels(), 10)["images"]] == [11, 10, 12]
    # a box budget of 2: image 11 (2 objects) fills it
    assert [im["id"] for im in select_batch(shuffled, hand_scores.pseudo_labels(), budget_boxes=2)["images"]] == [11]


def test_one_strategy_registry(hand_scores):
    import det_al.selection.files
    from det_al.selection import strategies

    assert not hasattr(det_al.selection.files, "STRATEGIES")  # the registry lives in det_al.selection.strategies only
    by_class = select_batch(hand_scores.ranking, hand_scores.pseudo_labels(), 1, "top:class")
    assert [im["id"] for im in by_class["images"]] == [11]
    chosen = select_batch(hand_scores.ranking, hand_scores.pseudo_labels(), 1, strategies.random, seed=0)
    assert chosen["images"][0]["id"] in hand_scores.images
    with pytest.raises(InputError, match="unknown strategy 'nope'"):
        select_batch(hand_scores.ranking, hand_scores.pseudo_labels(), 1, "nope")


def test_selection_is_coco_in_rank_order_with_pseudo_labels(hand_scores):
    selection = hand_scores.select(2)
    assert [im["id"] for im in selection["images"]] == [11, 10]
    assert selection["images"][0] == {"id": 11, "file_name": "b.png", "width": 50, "height": 40,
                                       "rank": 1, "informativeness": 0.9}
    assert [a["id"] for a in selection["annotations"]] == [2, 3, 1]  # image b's first, then a's
    assert selection["annotations"][1]["segmentation"] == hand_scores.pseudo_labels()["annotations"][2]["segmentation"]
    assert selection["annotations"][0]["score"] == 0.6
    assert selection["categories"] == hand_scores.categories


def test_strategy_order_does_not_change_rank_order(hand_scores):
    reverse = lambda ranking, budget, budget_boxes, **_: sorted(ranking, key=lambda r: -r["rank"])[:budget]  # noqa: E731
    selection = select_batch(hand_scores.ranking, hand_scores.pseudo_labels(), 2, reverse)
    assert [im["rank"] for im in selection["images"]] == [2, 3]


def test_selection_refuses_unknown_or_mismatched_images(hand_scores):
    with pytest.raises(InputError, match="image_id 99"):
        select_batch([{"image_id": 99, "rank": 1, "informativeness": 0.1}], hand_scores.pseudo_labels(), 1)
    with pytest.raises(InputError, match="file_name"):
        select_batch([{"image_id": 10, "file_name": "other.png", "rank": 1, "informativeness": 0.1}],
                     hand_scores.pseudo_labels(), 1)


@pytest.mark.parametrize("lines, message", [
    (['{"image_id": 1, "rank": 1}'], "missing key 'informativeness'"),
    (['{"image_id": 1, "rank": 1, "informativeness": 0.1}', '{"image_id": 1, "rank": 2, "informativeness": 0.1}'],
     "appears twice"),
    (['not json'], "line 1: not valid JSON"),
    (['{"image_id": 1, "rank": 1, "informativeness": NaN}'], "finite"),
])
def test_read_ranking_errors(tmp_path, lines, message):
    path = tmp_path / "ranking.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=message):
        read_ranking(path)


def test_select_command_writes_selection(hand_scores, tmp_path, capsys):
    paths = hand_scores.write(tmp_path)
    assert main(["select", "--ranking", str(paths["ranking"]), "--budget", "2", "--out", str(tmp_path / "sel")]) == 0
    selection = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert selection == json.loads(json.dumps(hand_scores.select(2)))
    assert "selected 2 of 3 images (3 pseudo-labels)" in capsys.readouterr().out


def test_select_command_errors_are_one_line(hand_scores, tmp_path, capsys):
    paths = hand_scores.write(tmp_path)
    assert main(["select", "--ranking", str(paths["ranking"]), "--budget", "0", "--out", str(tmp_path)]) == 2
    assert "--budget must be at least 1" in capsys.readouterr().err
    paths["pseudo_labels"].unlink()
    assert main(["select", "--ranking", str(paths["ranking"]), "--budget", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "pseudo_labels.json: file not found" in err and len(err.strip().splitlines()) == 1
