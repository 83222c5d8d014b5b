import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from det_al.data.datasets import CocoDetectionDataset, PoolDataset, pool_collate
from det_al.errors import InputError


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Five images, the third corrupt, the fourth missing; one in a subfolder, one 16-bit gray."""
    root = tmp_path_factory.mktemp("pool")
    (root / "sub").mkdir()
    Image.fromarray(np.full((4, 6, 3), 255, np.uint8)).save(root / "a.png")
    Image.fromarray(np.zeros((5, 3, 3), np.uint8)).save(root / "sub" / "é b.jpg")
    (root / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    Image.fromarray(np.full((2, 2), 65535, np.uint16)).save(root / "g16.png")
    images = [
        {"id": 10, "file_name": "a.png"},
        {"id": 11, "file_name": "sub/é b.jpg"},
        {"id": 12, "file_name": "bad.jpg"},
        {"id": 13, "file_name": "missing.png"},
        {"id": 14, "file_name": "g16.png"},
    ]
    return root, {"images": images, "categories": []}


def _check(items):
    assert [it["image_id"] for it in items] == [10, 11, 12, 13, 14]
    assert [it["file_name"] for it in items] == ["a.png", "sub/é b.jpg", "bad.jpg", "missing.png", "g16.png"]
    a, b, bad, missing, g16 = items
    assert a["image"].shape == (3, 4, 6) and a["image"].dtype == torch.float32
    assert torch.all(a["image"] == 1.0)
    assert b["image"].shape == (3, 5, 3)
    assert "image" not in bad and "error" in bad and "\n" not in bad["error"]
    assert missing["error"] == "file not found"
    assert g16["image"].shape == (3, 2, 2) and torch.all(g16["image"] == 1.0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_goes_past_bad_images(pool, num_workers):
    root, coco = pool
    dataset = PoolDataset(coco, root)
    assert len(dataset) == 5
    loader = DataLoader(dataset, batch_size=2, shuffle=False, num_workers=num_workers, collate_fn=pool_collate)
    batches = list(loader)
    assert [len(b) for b in batches] == [2, 2, 1]
    _check([item for batch in batches for item in batch])


def test_accepts_image_list_and_indexes(pool):
    root, coco = pool
    dataset = PoolDataset(coco["images"], str(root))
    assert dataset[-1]["image_id"] == 14
    assert dataset.file_name(1) == "sub/é b.jpg"
    with pytest.raises(IndexError):
        dataset[5]


def test_too_large_images_are_skipped(pool):
    root, coco = pool
    item = PoolDataset(coco, root, max_pixels=10)[0]
    assert item["error"].startswith("image too large")


def test_empty_pool():
    dataset = PoolDataset({"images": []}, ".")
    assert len(dataset) == 0
    assert list(DataLoader(dataset, batch_size=4, collate_fn=pool_collate)) == []


def test_pool_collate_keeps_items():
    batch = [{"image_id": 1}, {"image_id": 2, "error": "x"}]
    assert pool_collate(batch) == batch


def test_dataset_targets(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "b.png")
    categories = [{"id": 9, "name": "x"}, {"id": 4, "name": "y"}]
    coco = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "categories": categories,
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 4, "bbox": [2, 3, 10, 5], "iscrowd": 0,
             "segmentation": [[2, 3, 12, 3, 12, 8, 2, 8]]},
            {"id": 2, "image_id": 1, "category_id": 9, "bbox": [20, 10, 4, 4]},  # no segmentation: its box
            {"id": 3, "image_id": 1, "category_id": 9, "bbox": [0, 0, 40, 30], "iscrowd": 1},  # skipped
            {"id": 4, "image_id": 1, "category_id": 9, "bbox": [5, 5, 0, 3]},  # degenerate: skipped
        ],
    }
    dataset = CocoDetectionDataset(coco, tmp_path, categories, with_masks=True)
    image, target = dataset[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert target["image_id"] == 1
    assert target["boxes"].tolist() == [[2, 3, 12, 8], [20, 10, 24, 14]]
    assert target["labels"].tolist() == [2, 1]  # id 4 is categories[1] -> label 2
    assert target["masks"].shape == (2, 30, 40) and target["masks"].dtype == torch.uint8
    assert target["masks"][1].sum() == 16 and target["masks"][1, 10:14, 20:24].all()
    _, empty = dataset[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["masks"].shape == (0, 30, 40)
    coco["annotations"].append({"id": 5, "image_id": 2, "category_id": 77, "bbox": [1, 1, 2, 2]})
    with pytest.raises(InputError, match="category id 77"):
        CocoDetectionDataset(coco, tmp_path, categories)
