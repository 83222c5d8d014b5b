"""The warm-start benchmark: its statistics on hand-made rows (AULC, paired intervals, the
oracle's gain, the gate) and a --quick run that writes summary.json in the documented shape."""

import json

import pytest

pytest.importorskip("mlxtend")
pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_warm_start")


def row(strategy, seed, r, images, m):
    return {
        "strategy": strategy, "seed": seed, "round": r, "labelled_images": images, "labelled_boxes": 0,
        "map": m, "map50": m, "pool_images": 10, "selected_images": 0, "selected_boxes": 0,
        "selected_domains": "", "seconds": 1.0, "selected": [],
    }


def curves(strategy, per_seed):
    return [row(strategy, s, r, 10 + 5 * r, m) for s, maps in per_seed.items() for r, m in enumerate(maps)]


def test_compare_hand_computed(bench):
    # 10 labelled at the start, 2 rounds of 5; AULC = trapezoids over 0..10 added / 10
    # random: seed 0 0.1, 0.2, 0.3 -> 0.20; seed 1 0.1, 0.1, 0.3 -> 0.15
    # lookahead: seed 0 0.1, 0.3, 0.4 -> (1.0 + 1.75) / 10 = 0.275; seed 1 0.1, 0.3, 0.3 -> 0.25
    # fused: seed 0 0.1, 0.25, 0.3 -> (0.875 + 1.375) / 10 = 0.225; seed 1 0.1, 0.2, 0.3 -> 0.20
    rows = (curves("random", {0: [0.1, 0.2, 0.3], 1: [0.1, 0.1, 0.3]})
            + curves("lookahead", {0: [0.1, 0.3, 0.4], 1: [0.1, 0.3, 0.3]})
            + curves("fused", {0: [0.1, 0.25, 0.3], 1: [0.1, 0.2, 0.3]}))
    c = bench.compare(rows)
    assert c["lookahead"]["aulc"]["mean"] == pytest.approx(0.2625)
    # oracle - random: 0.075 and 0.10 -> mean 0.0875, sd 0.025/sqrt(2), t(0.975, 1) = 12.7062
    diff = c["lookahead"]["aulc_diff_vs_random"]
    assert diff["mean"] == pytest.approx(0.0875)
    half = 12.7062047 * 0.0176776695 / 2 ** 0.5
    assert diff["ci95"] == pytest.approx([0.0875 - half, 0.0875 + half], abs=1e-6)
    # fused gains 0.025 and 0.05 -> 0.0375 of the oracle's 0.0875
    assert c["fused"]["oracle_gain_share"] == pytest.approx(0.0375 / 0.0875)
    assert c["random"]["oracle_gain_share"] == 0.0
    # mean curves: random 0.1, 0.15, 0.3; fused 0.1, 0.225, 0.3 -> reaches 0.3 at 10 added (100 %)
    assert c["fused"]["added_pct_of_random"] == pytest.approx(100.0)
    # lookahead 0.1, 0.3, 0.35: 0.3 at 5 added = 50 % of random's 10
    assert c["lookahead"]["added_pct_of_random"] == pytest.approx(50.0)
    assert c["fused"]["aulc_diff_vs_least_confidence"]["mean"] is None  # no such arm here
    g = bench.gate(c)
    assert g["passed"] is False  # two seeds: the t-interval [-0.07, 0.25] holds 0
    assert g["aulc_diff_vs_random"]["ci95"][0] < 0


def test_paired_stats_hand_computed(bench):
    a = {s: float(s + 1) for s in range(5)}  # differences 1, 2, 3, 4, 5 against zero
    out = bench.paired_stats(a, {s: 0.0 for s in range(6)})
    assert out["n"] == 5 and out["mean"] == pytest.approx(3.0)
    # all five differences positive: exact two-sided signed-rank p = 2 / 2**5
    assert out["wilcoxon_p"] == pytest.approx(0.0625)
    low, high = out["bootstrap_ci95"]
    assert 1.0 <= low < 3.0 < high <= 5.0
    same = bench.paired_stats({0: 0.2, 1: 0.3}, {0: 0.2, 1: 0.3})
    assert same["mean"] == 0.0 and same["wilcoxon_p"] is None and same["bootstrap_ci95"] == [0.0, 0.0]
    # the gate passes when every seed's oracle gain is clearly positive
    rows = curves("random", {s: [0.1, 0.2, 0.3] for s in range(4)})
    rows += curves("lookahead", {s: [0.1, 0.25 + 0.01 * s, 0.35] for s in range(4)})
    assert bench.gate(bench.compare(rows))["passed"] is True


def test_quick_run_writes_the_summary(bench, tmp_path):
    arms = "random,lookahead,top:least_confidence,top:n_detections,class-balanced:fused,switch:fused"
    args = bench.get_args_parser().parse_args(["--quick", "--out", str(tmp_path / "out"), "--strategies", arms])
    bench.main(args)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (tmp_path / "out" / "learning_curve.png").stat().st_size > 1000
    assert list(summary["strategies"]) == arms.split(",")
    assert set(summary["gate"]) >= {"passed", "arm", "aulc_diff_vs_random"} and isinstance(summary["gate"]["passed"], bool)
    for name, s in summary["strategies"].items():
        assert s["seeds"] == [0, 1]
        for key in ("aulc_diff_vs_random", "aulc_diff_vs_least_confidence", "aulc_diff_vs_n_detections"):
            d = s[key]
            assert isinstance(d["mean"], float) and d["ci95"][0] <= d["mean"] <= d["ci95"][1]
        assert set(s["final_map_by_domain"]) == {"common", "rare"}
        assert set(s["final_ap_by_class"]) <= {str(d) for d in range(10)}
        assert s["added_pct_of_random"] is None or isinstance(s["added_pct_of_random"], float)
    assert summary["strategies"]["random"]["aulc_diff_vs_random"]["mean"] == 0.0
    # every arm starts from the seeds' shared round-0 models and adds the same number of labels
    assert len({points[0]["map"] for points in summary["curves"].values()}) == 1
    assert {points[-1]["images"] for points in summary["curves"].values()} == {10 + 2 * 5}
    # a resume runs nothing again: the arms' files are kept as they are
    before = (tmp_path / "out" / "seed0" / "class-balanced_fused.json").stat().st_mtime_ns
    bench.main(bench.get_args_parser().parse_args(["--quick", "--out", str(tmp_path / "out"), "--strategies", arms, "--resume"]))
    assert (tmp_path / "out" / "seed0" / "class-balanced_fused.json").stat().st_mtime_ns == before
