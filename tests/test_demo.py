"""``det-al demo`` end to end, shrunk to seconds: data, training, scoring, report."""

from __future__ import annotations

import json

from det_al.cli import main


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--minutes", "0.05", "--pool-size", "4", "--passes", "2",
                 "--set", "train.epochs=1"])
    assert code == 0
    ranking = [json.loads(x) for x in (out / "scores" / "ranking.jsonl").read_text().splitlines()]
    pool = json.loads((out / "data" / "pool.json").read_text())
    assert sorted(r["image_id"] for r in ranking) == sorted(im["id"] for im in pool["images"])
    assert (out / "train" / "last.pt").exists()
    assert (out / "report" / "index.html").exists()
    summary = json.loads((out / "scores" / "demo_summary.json").read_text())
    assert summary["drifted_in_pool"] == 2
