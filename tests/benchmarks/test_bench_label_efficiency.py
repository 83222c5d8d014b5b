"""The label-efficiency benchmark: its --quick run writes summary.json in the documented shape,
and its comparison reads paired seeds as it should (hand-made rows)."""

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_label_efficiency")


def row(strategy, seed, r, images, m, selected=()):
    return {
        "strategy": strategy, "seed": seed, "round": r, "labelled_images": images, "labelled_boxes": 0,
        "map": m, "map50": m, "pool_images": 10, "selected_images": len(selected), "selected_boxes": 0,
        "selected_domains": "", "seconds": 1.0, "selected": list(selected),
    }


def test_compare_hand_computed(bench):
    # two seeds, 10 labelled at the start, 2 rounds of 5. AULC = mean of the trapezoids over 0..10 added:
    # random seed 0: (0.1+0.2)/2 * 5 + (0.2+0.3)/2 * 5 = 2.0 -> 0.20; seed 1: 0.1,0.1,0.3 -> (0.5+1.0)/10 = 0.15
    # top    seed 0: 0.1,0.3,0.3 -> (1.0+1.5)/10 = 0.25;         seed 1: 0.1,0.2,0.3 -> 0.20
    rows = [
        row("random", 0, 0, 10, 0.1, [1, 2]), row("random", 0, 1, 15, 0.2, [3]), row("random", 0, 2, 20, 0.3),
        row("random", 1, 0, 10, 0.1, [1]), row("random", 1, 1, 15, 0.1), row("random", 1, 2, 20, 0.3),
        row("top", 0, 0, 10, 0.1, [4]), row("top", 0, 1, 15, 0.3, [5]), row("top", 0, 2, 20, 0.3),
        row("top", 1, 0, 10, 0.1), row("top", 1, 1, 15, 0.2), row("top", 1, 2, 20, 0.3),
    ]
    kinds = {"drifted": {0: {1, 4, 5}, 1: {1}}, "empty": {0: {2}, 1: set()}}
    c = bench.compare(rows, kinds)
    assert c["random"]["aulc"]["mean"] == pytest.approx(0.175)
    assert c["top"]["aulc"]["mean"] == pytest.approx(0.225)
    # paired differences 0.05 and 0.05: mean 0.05, no spread
    assert c["top"]["aulc_diff_vs_random"]["mean"] == pytest.approx(0.05)
    assert c["top"]["aulc_diff_vs_random"]["ci95"] == pytest.approx([0.05, 0.05])
    # mean curves: random 0.1, 0.15, 0.3; top 0.1, 0.25, 0.3. Random's final 0.3 is reached by top
    # at 10 added (0.25 -> 0.3 between 5 and 10 added): 10 of random's 10 = 100 %
    assert c["top"]["labels_added_to_reach_random"] == pytest.approx(10.0)
    assert c["top"]["added_pct_of_random"] == pytest.approx(100.0)
    # picks: random chose 1, 2, 3 (seed 0) and 1 (seed 1): drifted 1 (seed 0), 1 (seed 1) -> 2 of 4
    assert c["random"]["drifted_share"] == pytest.approx(0.5)
    assert c["random"]["empty_share"] == pytest.approx(0.25)
    assert c["top"]["drifted_share"] == pytest.approx(1.0)
    assert c["top"]["aulc_diff_vs_least_confidence"] == {"mean": None, "ci95": None, "n": 0}  # no such arm here


def test_quick_run_writes_the_summary(bench, tmp_path):
    args = bench.get_args_parser().parse_args(["--quick", "--out", str(tmp_path / "out")])
    bench.main(args)
    import json

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (tmp_path / "out" / "learning_curve.png").stat().st_size > 1000
    assert list(summary["strategies"]) == list(bench.STRATEGIES)
    for name, s in summary["strategies"].items():
        assert s["seeds"] == [0, 1]
        assert s["added_pct_of_random"] is None or isinstance(s["added_pct_of_random"], float)
        for key in ("aulc_diff_vs_random", "aulc_diff_vs_least_confidence"):
            assert isinstance(s[key]["mean"], float) and len(s[key]["ci95"]) == 2
            assert s[key]["ci95"][0] <= s[key]["mean"] <= s[key]["ci95"][1]
        assert 0.0 <= s["drifted_share"] <= 1.0
        # the final model on each validation domain, and the paired difference on the drifted one
        assert 0.0 <= s["final_map_old"]["mean"] <= 1.0 and 0.0 <= s["final_map_drifted"]["mean"] <= 1.0
        assert isinstance(s["drifted_map_diff_vs_random"]["mean"], float)
    assert summary["strategies"]["random"]["aulc_diff_vs_random"]["mean"] == 0.0
    assert summary["strategies"]["random"]["drifted_map_diff_vs_random"]["mean"] == 0.0
    cached = json.loads((tmp_path / "out" / "seed0" / "domain_maps.json").read_text())
    assert set(cached) == {"round 0", *bench.STRATEGIES}


def test_targets_judge_nothing_when_random_did_not_improve(bench):
    # random ends where it began (0.2): every curve "reaches" it at 0 added, which says nothing
    flat = [row("random", s, r, 10 + 5 * r, 0.2) for s in (0, 1) for r in (0, 1)]
    flat += [row("top", s, r, 10 + 5 * r, 0.2 - 0.05 * r) for s in (0, 1) for r in (0, 1)]
    kinds = {"drifted": {0: set(), 1: set()}, "empty": {0: set(), 1: set()}}
    c = bench.compare(flat, kinds)
    assert c["top"]["random_improved"] is False
    assert bench.targets(c)["added_le_50pct_of_random"] is None
    rising = [dict(r, map=r["map"] + 0.1 * r["round"]) for r in flat]  # random 0.2 -> 0.3, top 0.2 -> 0.25
    assert bench.targets(bench.compare(rising, kinds))["added_le_50pct_of_random"] is False


def test_a_seed_counts_only_when_every_arm_finished_it(bench):
    rows = [row(a, s, r, 10 + 5 * r, 0.1) for a in ("random", "top") for s in (0, 1, 2) for r in (0, 1, 2)]
    rows = [r for r in rows if not (r["strategy"] == "random" and r["seed"] == 2 and r["round"] == 2)]  # crashed
    assert bench.finished_seeds(rows) == ([0, 1], [2])
    assert bench.finished_seeds([]) == ([], [])
