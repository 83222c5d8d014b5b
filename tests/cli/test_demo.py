"""``det-al demo`` end to end, shrunk to seconds: data, training, scoring, report."""

from __future__ import annotations

import json
import re

from det_al.cli import main


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    # the default has no time cap; the test sets one to stay fast, and the demo says so
    code = main(["demo", "--out", str(out), "--epochs", "1", "--pool-size", "4", "--passes", "2",
                 "--set", "train.max_minutes=0.05"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "training maskrcnn_tiny for 1 epoch on cpu" in printed
    assert re.search(r"\n      [01] epochs? \(stopped at train.max_minutes\) in \d+ s, bbox AP 0\.\d{3} on the validation set", printed)
    ranking = [json.loads(x) for x in (out / "scores" / "ranking.jsonl").read_text().splitlines()]
    pool = json.loads((out / "data" / "pool.json").read_text())
    assert sorted(r["image_id"] for r in ranking) == sorted(im["id"] for im in pool["images"])
    assert (out / "train" / "last.pt").exists()
    assert (out / "report" / "index.html").exists()
    summary = json.loads((out / "scores" / "demo_summary.json").read_text())
    assert summary["drifted_in_pool"] == 2
    assert summary["epochs"] in (0, 1) and 0.0 <= summary["bbox_ap"] <= 1.0
