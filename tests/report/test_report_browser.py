"""The report in a real browser: headless Debian Chromium driven by Playwright (no download).

Checks the gallery (count and ranking order), sorting and filtering by class, the certain filter,
the passes toggle, that every request stays on the machine (file:// only), and that a category
named ``<script>alert(1)</script>`` shows as text without running. Saves a screenshot (path
printed; copied to $DET_AL_SCREENSHOT when set). Set up with ``.ci/setup_browser.sh``.

Skips only when no Chromium is installed and not under CI (CI=true makes a missing browser or
driver a failure): the ``headless_chromium`` fixture in conftest.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from det_al.report.write import write_report

def _ranks(page) -> list[int]:
    """Ranks of the visible gallery cards, top to bottom."""
    return page.eval_on_selector_all(
        "#gallery .card", "cs => cs.filter(c => !c.hidden).map(c => Number(c.dataset.rank))")


def test_report_in_headless_chromium(headless_chromium, report_pool, tmp_path):
    scores, images = report_pool.make_scores(tmp_path)
    csv = tmp_path / "loop.csv"
    csv.write_text("strategy,seed,round,n_images,mAP\nrandom,0,0,10,0.10\nrandom,0,1,20,0.18\n"
                   "informativeness,0,0,10,0.10\ninformativeness,0,1,20,0.24\n")
    index = write_report(scores, images, tmp_path / "report", top=5, loop_csv=csv)

    requests, dialogs, errors = [], [], []
    with headless_chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.on("request", lambda r: requests.append(r.url))
        # belt and braces: anything that is not a local file is aborted (and still recorded)
        context.route(lambda url: not url.startswith(("file:", "data:")), lambda route: route.abort())
        page = context.new_page()
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(index.as_uri(), wait_until="load")

        # the gallery: the top 5 images in ranking order, thumbnails loaded
        assert _ranks(page) == [1, 2, 3, 4, 5]
        files = page.eval_on_selector_all("#gallery .card .file", "es => es.map(e => e.textContent)")
        assert files == [row[1] for row in report_pool.POOL[:5]]
        assert page.eval_on_selector_all(
            "#gallery img.main", "is => is.map(i => i.complete && i.naturalWidth > 0)") == [True] * 5
        assert page.text_content("#count") == "showing 5 of 5"

        # user text is text: the category shows literally, nothing ran
        xss = page.locator("#gallery .cat").get_by_text(report_pool.XSS, exact=True)
        assert xss.count() == 1 and xss.is_visible()
        assert report_pool.XSS in page.eval_on_selector_all("#class option", "os => os.map(o => o.textContent)")
        assert page.evaluate("document.querySelectorAll('#gallery script').length") == 0
        assert page.get_by_text(report_pool.WEIRD, exact=True).is_visible()
        assert page.locator("#gallery .cat").get_by_text(report_pool.DOG, exact=True).first.is_visible()
        page.click("text=1 image could not be scored")
        assert page.get_by_text(report_pool.BROKEN, exact=True).is_visible()

        # sorting by class: main class by name, then rank; images without boxes last
        page.select_option("#sort", "class")
        assert _ranks(page) == report_pool.BY_CLASS
        page.select_option("#sort", "low")
        assert _ranks(page) == [5, 4, 3, 2, 1]
        page.select_option("#sort", "rank")
        # filtering by class and by certainty
        page.select_option("#class", "cat")
        assert _ranks(page) == [1, 5]
        assert page.text_content("#count") == "showing 2 of 5"
        page.select_option("#class", report_pool.XSS)
        assert _ranks(page) == [2]
        page.select_option("#class", "")
        page.select_option("#certain", "certain")
        assert _ranks(page) == [3, 4]
        page.select_option("#certain", "all")

        # the passes view swaps the thumbnails of the images that have passes
        assert page.locator("img.passes").first.is_hidden()
        page.check("#passes")
        assert page.locator("img.passes").first.is_visible()
        assert page.locator("img.main").first.is_hidden()
        page.uncheck("#passes")

        screenshot = tmp_path / "report_screenshot.png"
        page.screenshot(path=str(screenshot), full_page=True)

    print(f"\nreport screenshot: {screenshot}")
    if os.environ.get("DET_AL_SCREENSHOT"):
        target = Path(os.environ["DET_AL_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, target)
        print(f"report screenshot copied to: {target}")

    assert dialogs == [], f"a dialog fired: {dialogs}"
    assert errors == [], f"console errors: {errors}"
    assert requests, "no request recorded"
    assert all(url.startswith("file://") for url in requests), \
        f"requests leaving the machine: {[u for u in requests if not u.startswith('file://')]}"
