"""The loop's results table: CSV round trip, summaries and label efficiency, by hand."""

import csv
import math

import pytest

from det_al.loop.results import CSV_FIELDS, RowsWriter, format_efficiency, label_efficiency, read_rows, summarise


def row(strategy, seed, r, images, m, selected=()):
    return {
        "strategy": strategy, "seed": seed, "round": r, "labelled_images": images, "labelled_boxes": 2 * images,
        "map": m, "map50": m, "pool_images": 10, "selected_images": len(selected), "selected_boxes": 0,
        "selected_domains": "", "seconds": 1.0, "selected": list(selected),
    }


def test_summarise_and_label_efficiency_hand_computed():
    rows = [
        row("random", 0, 0, 10, 0.10), row("random", 1, 0, 10, 0.20),
        row("random", 0, 1, 20, 0.20), row("random", 1, 1, 20, 0.30),
        row("random", 0, 2, 30, 0.30), row("random", 1, 2, 30, 0.40),
        row("top", 0, 0, 10, 0.10), row("top", 1, 0, 10, 0.20),
        row("top", 0, 1, 20, 0.30), row("top", 1, 1, 20, 0.40),
        row("top", 0, 2, 30, 0.40), row("top", 1, 2, 30, 0.40),
        row("bad", 0, 0, 10, 0.15), row("bad", 1, 0, 10, 0.15),
        row("bad", 0, 1, 20, 0.0), row("bad", 1, 1, 20, 0.0),
    ]
    s = summarise(rows)
    assert [p["images"] for p in s["random"]] == [10, 20, 30]
    assert [round(p["map"], 6) for p in s["random"]] == [0.15, 0.25, 0.35]
    # sample std of (0.1, 0.2) = sqrt(0.005)
    assert math.isclose(s["random"][0]["std"], math.sqrt(0.005))
    e = label_efficiency(rows)
    # labels added count from each strategy's round 0 (10 images): random adds 20.
    # random's final mean is 0.35; top's mean goes 0.15 -> 0.35 at 10 added: reached at 10
    assert e["top"]["added"] == pytest.approx(10.0)
    assert e["top"]["percent"] == pytest.approx(100 * 10 / 20)
    assert e["random"]["added"] == pytest.approx(20.0) and e["random"]["percent"] == pytest.approx(100.0)
    assert e["bad"]["reached"] is False and e["bad"]["added"] is None
    # bad at round 1: 0.0 < 0.25 - 0.0707 -> below; at round 0: 0.15 == random
    assert e["bad"]["below_rounds"] == [1]
    assert e["top"]["below_rounds"] == []
    assert e["top"]["meaningful"] is True
    # AULC over 0..20 added, trapezoids / 20: random seed 0 (0.1, 0.2, 0.3) -> 0.2, seed 1 -> 0.3;
    # top seed 0 (0.1, 0.3, 0.4) -> (0.2 + 0.35) / 2 = 0.275, seed 1 (0.2, 0.4, 0.4) -> 0.35
    assert e["random"]["aulc"]["mean"] == pytest.approx(0.25)
    assert e["top"]["aulc"]["mean"] == pytest.approx(0.3125)
    # paired differences 0.075 and 0.05: mean 0.0625, std 0.0176777, t(0.975, 1) = 12.7062
    assert e["top"]["aulc_diff"]["mean"] == pytest.approx(0.0625)
    half = 12.7062047 * 0.025 / math.sqrt(2) / math.sqrt(2)
    assert e["top"]["aulc_diff"]["ci95"] == pytest.approx([0.0625 - half, 0.0625 + half], abs=1e-6)
    # bad ran one round (10 added): seed 0 (0.15, 0.0) -> 0.075, seed 1 the same; random's first
    # 10 added are not what bad is compared on: AULC is each curve's own mean over its labels
    assert e["bad"]["aulc"]["mean"] == pytest.approx(0.075)
    flat = [row("random", 0, 0, 10, 0.3), row("random", 0, 1, 20, 0.2), row("top", 0, 0, 10, 0.3), row("top", 0, 1, 20, 0.1)]
    got = label_efficiency(flat)["top"]
    assert (got["added"], got["percent"], got["reached"], got["below_rounds"], got["meaningful"]) == (0.0, 0.0, True, [1], False)
    assert got["aulc_diff"]["ci95"] is None  # one seed: no interval
    text = format_efficiency(label_efficiency(rows))
    assert "10.0 (50%)" in text and "+0.0625 [" in text and "never" in text


def test_label_efficiency_interpolates():
    rows = [row("random", 0, 0, 10, 0.1), row("random", 0, 1, 30, 0.4), row("x", 0, 0, 10, 0.2), row("x", 0, 1, 30, 0.6)]
    # target 0.4 between (0 added, 0.2) and (20 added, 0.6): (0.2 / 0.4) * 20 = 10 added
    assert label_efficiency(rows)["x"]["added"] == pytest.approx(10.0)


def test_results_file_round_trip_drops_torn_line(tmp_path):
    path = tmp_path / "results.csv"
    rows = [row("top", 0, 0, 4, 0.125, [7, 3]), row("top", 0, 1, 6, 0.25)]
    writer = RowsWriter(path, rows[:1])
    writer.append(rows[1])
    with open(path, "a") as f:
        f.write("top,0,2,8,0.3")  # a crash in the middle of a row
    back = read_rows(path)
    assert [(r["round"], r["selected"], r["map"]) for r in back] == [(0, [7, 3], 0.125), (1, [], 0.25)]
    RowsWriter(path, back)  # rewrites the complete rows only
    with open(path) as f:
        assert list(csv.reader(f))[0] == list(CSV_FIELDS)
    assert len(read_rows(path)) == 2


def test_labels_to_reach_interpolates_and_says_never():
    from det_al.loop.results import labels_to_reach

    # 0.30 lies a quarter of the way from 0.25 (8 labels) to 0.45 (16 labels): 8 + 0.25 * 8 = 10
    assert labels_to_reach([0, 8, 16], [0.1, 0.25, 0.45], 0.30) == pytest.approx(10.0)
    assert labels_to_reach([0, 8, 16], [0.3, 0.25, 0.45], 0.30) == 0.0  # reached at the start
    assert labels_to_reach([0, 8, 16], [0.1, 0.3, 0.3], 0.30) == 8.0  # exactly on a point
    assert labels_to_reach([0, 8, 16], [0.1, 0.2, 0.29], 0.30) is None


def test_aulc_is_the_mean_height_of_the_trapezoids():
    from det_al.loop.results import aulc

    # trapezoids: 8 * (0.1 + 0.3) / 2 = 1.6 and 8 * (0.3 + 0.5) / 2 = 3.2; 4.8 / 16 = 0.3
    assert aulc([0, 8, 16], [0.1, 0.3, 0.5]) == pytest.approx(0.3)
    assert aulc([0, 4, 16], [0.2, 0.2, 0.2]) == pytest.approx(0.2)
    assert aulc([0], [0.4]) == 0.4


def test_mean_ci95_student_t():
    from det_al.loop.results import mean_ci95

    # values 1, 2, 3, 4, 5: mean 3, sample std sqrt(2.5) = 1.5811, t(0.975, df=4) = 2.7764
    # half width 2.7764 * 1.5811 / sqrt(5) = 1.9633
    r = mean_ci95([1, 2, 3, 4, 5])
    assert r["mean"] == 3.0 and r["n"] == 5
    assert r["ci95"] == pytest.approx([3 - 1.9633, 3 + 1.9633], abs=1e-4)
    assert mean_ci95([0.5]) == {"mean": 0.5, "ci95": None, "n": 1}
    assert mean_ci95([]) == {"mean": None, "ci95": None, "n": 0}
    assert mean_ci95([0.2, 0.2, 0.2])["ci95"] == pytest.approx([0.2, 0.2])  # no spread, no width
