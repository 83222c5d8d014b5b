"""det-al report: a hand-written scored pool -> static site; escaping, top N, atomic writes."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pytest

from det_al.cli import main
from det_al.errors import InputError
from det_al.report.write import components_of, scan_ranking, write_report
from det_al.report.draw import DrawnObject, draw_objects, fit_size, uncertainty_colour
from det_al.report.plots import curve_columns, read_loop_csv

def page_data(index: Path) -> dict:
    """The JSON the page's script reads."""
    text = index.read_text(encoding="utf-8")
    block = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    return json.loads(block.group(1))


@pytest.fixture
def scored(report_pool, tmp_path) -> tuple[Path, Path]:
    return report_pool.make_scores(tmp_path)


def test_report_site_top_n(report_pool, scored, tmp_path):
    scores, images = scored
    index = write_report(scores, images, tmp_path / "report", top=5)
    assert index == tmp_path / "report" / "index.html"
    data = page_data(index)
    cards = data["cards"]
    assert [c["rank"] for c in cards] == [1, 2, 3, 4, 5]
    assert [c["file_name"] for c in cards] == [p[1] for p in report_pool.POOL[:5]]
    thumbs = sorted(p.name for p in (tmp_path / "report" / "thumbnails").iterdir())
    # one thumbnail per top image, a passes thumbnail for the three images with passes
    assert thumbs == ["00001.jpg", "00001_passes.jpg", "00002.jpg", "00002_passes.jpg",
                      "00003.jpg", "00003_passes.jpg", "00004.jpg", "00005.jpg"]
    first = cards[0]
    assert first["components"] == [["class", 0.819], ["box", 0.455], ["mask", 0.0],
                                   ["presence", 0.1], ["novelty", 0.42]]
    assert first["classes"] == ["cat", report_pool.DOG]           # two cats, one dog
    assert [o["uncertainty"] for o in first["objects"]] == [0.8, 0.5, 0.2]  # most uncertain first
    assert first["n_passes"] == 3 and cards[3]["passes_thumb"] is None
    assert cards[2]["certain"] and not cards[0]["certain"]
    assert cards[4]["error"] == "file not found" and cards[4]["passes_thumb"] is None
    assert data["vmax"] == 0.8
    # nothing is left beside the report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "report", "scores"]


def test_report_html_escapes_user_text(report_pool, scored, tmp_path):
    scores, images = scored
    text = write_report(scores, images, tmp_path / "report", top=5).read_text(encoding="utf-8")
    for raw in (report_pool.XSS, "we<b>ird", "bro<b>ken", "<i>ckpt", report_pool.DOG):
        assert raw not in text
    assert text.count("<script") == 2            # the JSON block and the page's own script
    assert html.escape(report_pool.BROKEN) in text           # skipped table, escaped server-side
    assert html.escape("<i>ckpt</i>.pt") in text  # run.json values too
    # only XML namespace names (never fetched), no other address
    assert set(re.findall(r"https?://[^\s\"']*", text)) <= {"http://www.w3.org/2000/svg",
                                                             "http://www.w3.org/1999/xlink"}


def test_report_stays_offline(scored, tmp_path):
    scores, images = scored
    text = write_report(scores, images, tmp_path / "report", top=2).read_text(encoding="utf-8")
    # no external resource: every src/href is relative (SVG namespaces are not fetched)
    for url in re.findall(r'(?:src|href)="([^"#]+)"', text):
        assert "://" not in url, url
    assert "Content-Security-Policy" in text and "default-src 'none'" in text


def test_scan_ranking_streams_top_and_histogram(report_pool, tmp_path):
    scores, _ = report_pool.make_scores(tmp_path, ranking_order=[3, 0, 5, 1, 4, 2])   # not in rank order
    summary = scan_ranking(scores / "ranking.jsonl", top=3, bins=10)
    assert [r["rank"] for r in summary.top] == [1, 2, 3]
    assert (summary.n_images, summary.n_certain, summary.n_empty) == (6, 2, 1)
    np.testing.assert_allclose(summary.edges, np.linspace(0.05, 0.91, 11))   # min to max
    # bins of 0.086 from 0.05: 0.05 -> 0, 0.22 -> 1, 0.35 -> 3, 0.55 -> 5, 0.72 -> 7, 0.91 -> 9
    assert summary.pool_counts.tolist() == [1, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    assert summary.top_counts.tolist() == [0, 0, 0, 0, 0, 1, 0, 1, 0, 1]


def test_large_pool_gets_thumbnails_for_the_top_only(scored, tmp_path):
    scores, images = scored
    with open(scores / "ranking.jsonl", "a") as f:   # 5000 more images, none in the top 3
        for i in range(5000):
            f.write(json.dumps({"image_id": 1000 + i, "file_name": f"x{i}.png", "rank": 7 + i,
                                "informativeness": 0.01, "certain": True}) + "\n")
    index = write_report(scores, images, tmp_path / "report", top=3)
    assert len(list((tmp_path / "report" / "thumbnails").iterdir())) == 6   # 3 images + 3 passes views
    assert [c["rank"] for c in page_data(index)["cards"]] == [1, 2, 3]
    assert "<b>5,006</b> images ranked" in index.read_text()
    assert "<b>5,002</b> certain" in index.read_text()


def test_bad_ranking_line_names_file_and_line(scored, tmp_path):
    scores, images = scored
    with open(scores / "ranking.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(InputError, match=r"ranking\.jsonl: line 7: not valid JSON"):
        write_report(scores, images, tmp_path / "report")
    assert not (tmp_path / "report").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "scores"]


def test_failed_rebuild_keeps_previous_report(scored, tmp_path):
    scores, images = scored
    out = tmp_path / "report"
    write_report(scores, images, out, top=2)
    before = (out / "index.html").read_text()
    (scores / "passes.jsonl").write_text('{"image_id": 1, "passes": 5}\n')
    with pytest.raises(InputError, match="passes.jsonl: line 1"):
        write_report(scores, images, out, top=4)
    assert (out / "index.html").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "report", "scores"]


def test_refuses_to_replace_a_folder_that_is_not_a_report(scored, tmp_path):
    scores, images = scored
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a det_al report"):
        write_report(scores, images, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_cli_report_and_one_line_error(scored, tmp_path, capsys):
    scores, images = scored
    out = tmp_path / "site"
    assert main(["report", "--scores", str(scores), "--image-root", str(images),
                 "--out", str(out), "--top", "3"]) == 0
    assert "report written" in capsys.readouterr().out
    assert len(page_data(out / "index.html")["cards"]) == 3
    assert main(["report", "--scores", str(tmp_path / "nope"), "--image-root", str(images),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("det-al report: error:") and "nope" in err and "\n" not in err


def test_report_defaults_to_the_image_root_the_scores_remember(scored, tmp_path, capsys):
    scores, images = scored
    with pytest.raises(InputError, match="record no image root.*--image-root"):
        write_report(scores, None, tmp_path / "report")
    run = json.loads((scores / "run.json").read_text())
    (scores / "run.json").write_text(json.dumps({**run, "image_root": str(images)}))
    assert main(["report", "--scores", str(scores), "--out", str(tmp_path / "site"), "--top", "3"]) == 0
    cards = page_data(tmp_path / "site" / "index.html")["cards"]
    assert len(cards) == 3 and (tmp_path / "site" / "thumbnails").is_dir()


def test_loop_csv_learning_curves(scored, tmp_path):
    scores, images = scored
    csv = tmp_path / "loop.csv"
    csv.write_text("Strategy, seed ,round,n_images,n_boxes,mAP,mAP50\n"
                   "random,0,0,10,30,0.10,0.2\nrandom,1,0,10,31,0.12,0.25\n"
                   "informativeness,0,0,10,30,0.11,\ninformativeness,0,1,20,60,0.30,0.5\n")
    rows = read_loop_csv(csv)
    assert rows[0]["Strategy"] == "random" and rows[0]["seed"] == "0"
    assert curve_columns(rows) == ("n_images", ["mAP", "mAP50"], "Strategy")
    text = write_report(scores, images, tmp_path / "report", top=2, loop_csv=csv).read_text()
    assert "learning curves" in text and text.count("<svg") == 3
    csv.write_text("strategy,round,note\nrandom,0,ok\n")
    text = write_report(scores, images, tmp_path / "report", top=2, loop_csv=csv).read_text()
    assert "no numeric metric column" in text
    with pytest.raises(InputError, match="missing.csv: file not found"):
        write_report(scores, images, tmp_path / "report", loop_csv=tmp_path / "missing.csv")


def test_components_of_orders_known_components_first():
    record = {"image_id": 1, "rank": 1, "informativeness": 0.5, "zeta": 0.2, "novelty": 0.3,
              "box": 0.1, "class": 0.4, "certain": True, "n_objects": 3, "file_name": "x"}
    assert components_of(record) == [("class", 0.4), ("box", 0.1), ("novelty", 0.3), ("zeta", 0.2)]


def test_uncertainty_colour_and_fit_size():
    assert uncertainty_colour(0.0, 0.8) == uncertainty_colour(-1.0, 0.8)     # clipped below
    assert uncertainty_colour(0.8, 0.8) == uncertainty_colour(5.0, 0.8)      # clipped above
    assert uncertainty_colour(0.8, 0.8) != uncertainty_colour(0.0, 0.8)
    assert fit_size(640, 480, 320) == (320, 240)
    assert fit_size(100, 50, 320) == (100, 50)                               # never enlarged


def test_draw_objects_box_and_mask_outline_colours():
    image = np.zeros((100, 200, 3), np.uint8)
    mask = np.zeros((100, 200), bool)
    mask[60:90, 120:180] = True
    objects = [DrawnObject((10, 10, 50, 50), 1.0), DrawnObject((0, 0, 1, 1), 0.0, mask)]
    canvas = draw_objects(image, objects, vmax=1.0, max_side=100)       # scale 0.5
    assert canvas.shape == (50, 100, 3)
    np.testing.assert_array_equal(canvas[15, 25], uncertainty_colour(1.0, 1.0))   # box's right edge x=25
    np.testing.assert_allclose(canvas[37, 60], uncertainty_colour(0.0, 1.0), atol=40)  # mask's left edge
    assert canvas[37, 75].max() == 0                                                # inside the mask: untouched
    assert image.max() == 0                                                         # input not drawn on
    same_size = draw_objects(image, objects, vmax=1.0, max_side=400)
    assert same_size.shape == image.shape and image.max() == 0
