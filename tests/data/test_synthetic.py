import contextlib
import io
import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from pycocotools.coco import COCO

from det_al.data.images import read_image
from det_al.data.synthetic import CLASS_NAMES, categories, generate, make_demo_data, render_example


def test_render_is_deterministic_and_independent_of_batch():
    a, objs_a = render_example("drifted", seed=3, image_id=17)
    b, objs_b = render_example("drifted", seed=3, image_id=17)
    np.testing.assert_array_equal(a, b)
    assert [o["bbox"] for o in objs_a] == [o["bbox"] for o in objs_b]
    c, _ = render_example("drifted", seed=4, image_id=17)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("domain", ["old", "drifted"])
def test_masks_agree_with_boxes_and_classes(domain):
    for image_id in range(1, 21):
        image, objects = render_example(domain, seed=0, image_id=image_id)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert 1 <= len(objects) <= 4
        for obj in objects:
            assert obj["category_id"] in (1, 2, 3)
            ys, xs = np.nonzero(obj["mask"])
            x, y, w, h = obj["bbox"]
            # the box of the mask, in COCO pixel-edge coordinates, within 1 px
            assert abs(x - xs.min()) <= 1 and abs(y - ys.min()) <= 1
            assert abs(x + w - (xs.max() + 1)) <= 1 and abs(y + h - (ys.max() + 1)) <= 1
            assert obj["area"] == obj["mask"].sum() >= 12
            decoded = mask_utils.decode(
                {"size": obj["segmentation"]["size"], "counts": obj["segmentation"]["counts"].encode()}
            )
            np.testing.assert_array_equal(decoded.astype(bool), obj["mask"])
        # visible masks never overlap
        total = sum(o["mask"].astype(int) for o in objects)
        assert total.max() == 1


def test_domains_differ():
    old = [render_example("old", 0, i) for i in range(1, 31)]
    new = [render_example("drifted", 0, i) for i in range(1, 31)]

    def background_brightness(examples):
        values = []
        for image, objects in examples:
            covered = np.any([o["mask"] for o in objects], axis=0)
            values.append(image[~covered].mean())
        return np.mean(values)

    def mean_area(examples):
        return np.mean([o["area"] for _, objs in examples for o in objs])

    assert background_brightness(old) > 150 > 100 > background_brightness(new)
    assert mean_area(old) > 2 * mean_area(new)
    # warm shapes in the old domain (red > blue), cool ones after the drift (blue > red)
    old_rgb = np.mean([im[o["mask"]].mean(0) for im, objs in old for o in objs], axis=0)
    new_rgb = np.mean([im[o["mask"]].mean(0) for im, objs in new for o in objs], axis=0)
    assert old_rgb[0] > old_rgb[2] and new_rgb[2] > new_rgb[0]


def test_generate_writes_images_and_loads_in_pycocotools(tmp_path):
    coco = generate(tmp_path, 4, "old", seed=1, start_id=10, image_format="jpg")
    assert [im["id"] for im in coco["images"]] == [10, 11, 12, 13]
    assert coco["categories"] == categories()
    assert [c["name"] for c in coco["categories"]] == list(CLASS_NAMES)
    for im in coco["images"]:
        assert read_image(tmp_path / im["file_name"]).shape == (128, 128, 3)
    ann_ids = [a["id"] for a in coco["annotations"]]
    assert len(ann_ids) == len(set(ann_ids))
    gt = COCO()
    gt.dataset = json.loads(json.dumps(coco))
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    ann = gt.loadAnns(gt.getAnnIds(imgIds=[10]))[0]
    assert gt.annToMask(ann).sum() == ann["area"]


def test_png_pixels_match_render(tmp_path):
    coco = generate(tmp_path, 1, "drifted", seed=5, start_id=3, size=64)
    image, _ = render_example("drifted", 5, 3, size=64)
    np.testing.assert_array_equal(read_image(tmp_path / coco["images"][0]["file_name"]), image)


def test_custom_category_ids():
    _, objects = render_example("old", 0, 1, category_ids=(4, 9, 2))
    assert {o["category_id"] for o in objects} <= {4, 9, 2}
    with pytest.raises(ValueError, match="3 distinct"):
        categories((1, 1, 2))


def test_make_demo_data(tmp_path):
    paths = make_demo_data(tmp_path, seed=0, n_train=6, n_val=4, n_pool=8, drift_fraction=0.25)
    files = {k: json.loads(paths[k].read_text()) for k in ("train", "val", "pool", "oracle")}
    assert {im["domain"] for im in files["train"]["images"]} == {"old"}
    assert [im["domain"] for im in files["pool"]["images"]].count("drifted") == 2
    assert [im["domain"] for im in files["val"]["images"]].count("drifted") == 1
    assert files["pool"]["annotations"] == []
    assert files["oracle"]["images"] == files["pool"]["images"]
    assert len(files["oracle"]["annotations"]) >= 8
    ids = [im["id"] for f in ("train", "val", "pool") for im in files[f]["images"]]
    assert sorted(ids) == list(range(1, 19))
    assert paths["image_root"] == tmp_path
    for im in files["pool"]["images"]:
        assert im["file_name"].startswith("images/")
        assert (paths["image_root"] / im["file_name"]).is_file()
    # same seed, same bytes
    again = make_demo_data(tmp_path / "again", seed=0, n_train=6, n_val=4, n_pool=8, drift_fraction=0.25)
    assert again["oracle"].read_text() == paths["oracle"].read_text()
    name = files["pool"]["images"][0]["file_name"]
    assert (again["image_root"] / name).read_bytes() == (paths["image_root"] / name).read_bytes()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown domain"):
        render_example("new", 0, 1)
    with pytest.raises(ValueError, match="image format"):
        generate(tmp_path, 1, "old", 0, image_format="gif")
    with pytest.raises(ValueError, match="drift_fraction"):
        make_demo_data(tmp_path, drift_fraction=1.5)


def test_background_only_and_fixed_object_counts(tmp_path):
    image, objects = render_example("drifted", seed=0, image_id=5, n_objects=0)
    assert image.shape == (128, 128, 3) and objects == []
    _, objects = render_example("old", seed=0, image_id=5, n_objects=2)
    assert len(objects) == 2
    coco = generate(tmp_path, 2, "old", seed=0, start_id=7, n_objects=0)
    assert [im["id"] for im in coco["images"]] == [7, 8] and coco["annotations"] == []
    with pytest.raises(ValueError, match="n_objects"):
        render_example("old", seed=0, image_id=5, n_objects=-1)
