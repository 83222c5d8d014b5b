"""PoolImages and the streaming pool reader: same images and errors as json.load + validate_coco,
in tens of bytes per image."""

from __future__ import annotations

import hashlib
import json
import logging
import tracemalloc

import numpy as np
import pytest

from det_al.data.coco import load_coco
from det_al.errors import InputError
from det_al.data.pool import PoolImages, read_pool

IMAGES = [
    {"id": 1, "file_name": "a.png", "width": 10, "height": 8},
    {"id": 5, "file_name": "sub/é b.jpg"},
    {"id": -3, "file_name": "a.png", "width": 4, "height": 2},
    {"id": 2**40, "file_name": "c}{,\"].png", "width": 1, "height": 1},
]


def test_indexing_slicing_and_iteration_give_the_image_dicts():
    pool = PoolImages.from_dicts(IMAGES)
    assert len(pool) == 4
    assert list(pool) == IMAGES  # sizes not given stay absent
    assert pool[-1] == IMAGES[3] and pool.file_name(1) == "sub/é b.jpg" and pool.image_id(2) == -3
    assert list(pool[1::2]) == [IMAGES[1], IMAGES[3]]
    assert list(pool[np.array([False, True, True, False])]) == IMAGES[1:3]
    assert list(pool[np.array([3, 0])]) == [IMAGES[3], IMAGES[0]]
    assert list(pool[2:]) == IMAGES[2:]
    assert pool[::1] is pool and pool[0:] is pool  # the whole pool is not copied
    assert len(pool[4:]) == 0 and list(pool[np.zeros(4, bool)]) == []
    with pytest.raises(IndexError):
        pool[4]
    assert pool.widths.tolist() == [10, 0, 4, 1]


def test_sha256_hashes_one_line_per_image():
    text = "1\ta.png\t10\t8\n5\tsub/é b.jpg\tNone\tNone\n-3\ta.png\t4\t2\n1099511627776\tc}{,\"].png\t1\t1\n"
    assert PoolImages.from_dicts(IMAGES).sha256() == hashlib.sha256(text.encode()).hexdigest()
    assert PoolImages.from_dicts([]).sha256() == hashlib.sha256(b"").hexdigest()


def test_duplicate_file_names_in_order_of_first_appearance():
    names = ["b", "a", "c", "a", "b", "a", "d"]
    pool = PoolImages.from_dicts({"id": i, "file_name": n} for i, n in enumerate(names))
    assert pool.duplicate_file_names() == ["b", "a"]
    assert PoolImages.from_dicts(IMAGES[:2]).duplicate_file_names() == []


def test_arrays_must_agree():
    with pytest.raises(ValueError, match="length N"):
        PoolImages(np.arange(2), b"ab", np.array([0, 1, 2]), np.zeros(1), np.zeros(2))
    with pytest.raises(ValueError, match="offsets must run from 0 to 2"):
        PoolImages(np.arange(2), b"ab", np.array([0, 1, 3]), np.zeros(2), np.zeros(2))


# A pool file as a person or another tool may write it: keys in any order, annotations first,
# spaces and newlines anywhere, nested objects and strings holding "}", "]" and ",".
AWKWARD = (
    '\n { "annotations" : [ {"id": 1, "image_id": 5, "category_id": 7, "bbox": [1, 2, 3, 4]} ] ,\n'
    ' "info": {"description": "x}]", "year": 2024}, "categories":[{"id":7,"name":"cat"}],\n'
    ' "images" : [\n  {"id": 1, "file_name": "a.png", "width": 10, "height": 8, "extra": {"k": [1, {"n": "}"}]}} ,\n'
    '{"file_name": "sub/\\u00e9 b.jpg", "id": 5}\n,{"id": -3, "file_name": "a.png", "width": 4, "height": 2},'
    '{"id": 1099511627776, "file_name": "c}{,\\"].png", "width": 1, "height": 1}\n ] , "licenses": [] }\n'
)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 16, 64, 1 << 20])
def test_streamed_pool_equals_json_load(tmp_path, chunk, caplog):
    path = tmp_path / "pool.json"
    path.write_text(AWKWARD, encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        pool = read_pool(path, chunk=chunk)
    assert list(pool["images"]) == IMAGES
    assert list(pool["images"]) == [{k: im[k] for k in ("id", "file_name", "width", "height") if k in im}
                                    for im in load_coco(path)["images"]]
    assert pool["categories"] == [{"id": 7, "name": "cat"}]
    assert "1 file names appear more than once (first: 'a.png')" in caplog.text


def test_many_images_across_chunks(tmp_path):
    images = [{"id": i, "file_name": f"d{i % 7}/{i}.jpg", "width": 1 + i % 5, "height": 3} for i in range(3000)]
    path = tmp_path / "pool.json"
    path.write_text(json.dumps({"images": images, "categories": []}, indent=2))
    for chunk in (100, 4096, 1 << 20):
        assert list(read_pool(path, chunk=chunk)["images"]) == images


def test_empty_and_minimal_pools(tmp_path):
    path = tmp_path / "pool.json"
    path.write_text('{"images":[],"categories":[]}')
    assert len(read_pool(path)["images"]) == 0
    path.write_text('{"categories": [], "images": [{"id": 7, "file_name": "x"}]}  \n')
    assert list(read_pool(path, chunk=1)["images"]) == [{"id": 7, "file_name": "x"}]


def test_a_key_given_twice_means_what_json_load_makes_of_it(tmp_path):
    path = tmp_path / "pool.json"
    path.write_text('{"images": [{"id": 1, "file_name": "a"}], "categories": [], "images": [{"id": 2, "file_name": "b"}]}')
    assert list(read_pool(path)["images"]) == [{"id": 2, "file_name": "b"}]


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"images": [{"id": 1, "file_name": "a"}], "categories": [', r"not valid JSON \(line 1, column"),
        ('{"images": [{"id": 1, "file_name": "a"}], "categories": []} trailing', r"not valid JSON \(line 1, column"),
        ('{"images": [{"id": 1, "file_name": "a"},\n{"id": 2 "file_name": "b"}], "categories": []}',
         r"not valid JSON \(line 2, column 10"),
        ("", r"not valid JSON \(line 1, column 1"),
        ('[{"id": 1}]', "expected a JSON object, got a list"),
        ('{"images": [{"id": 9223372036854775808, "file_name": "a"}], "categories": []}',
         r"images\[0\] \(id 9223372036854775808\): 'id' is out of the 64-bit integer range"),
        ('{"images": [{"id": 1, "file_name": "a", "width": 2147483648}], "categories": []}',
         r"images\[0\] \(id 1\): 'width' must be below 2\*\*31, got 2147483648"),
        ('{"images": [{"id": 1, "file_name": "a", "width": true}], "categories": []}',
         r"images\[0\] \(id 1\): 'width' must be a positive integer, got True"),
        ('{"images": [{"id": 1, "file_name": "a", "height": null}], "categories": []}',
         r"images\[0\] \(id 1\): 'height' must be a positive integer, got None"),
        ('{"images": [{"id": 1, "file_name": "a", "width": 0}], "categories": []}',
         r"'width' must be a positive integer, got 0"),
        ('{"images": [{"id": 1, "file_name": ""}], "categories": []}', "'file_name' must be a non-empty string"),
        ('{"images": [{"id": 1, "file_name": "a"}, 3], "categories": []}', r"images\[1\]: expected an object, got a number"),
        ('{"images": [{"id": 1, "file_name": "a"}, {"id": 2, "file_name": "b"}, {"id": 1, "file_name": "c"}], '
         '"categories": []}', r"duplicate image id 1 \(images\[0\] and images\[2\]\)"),
        ('{"images": [], "categories": [], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]}',
         r"annotations\[0\] \(id 1\): unknown image id 1"),
    ],
)
def test_bad_pools_give_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "pool.json"
    path.write_text(text)
    for chunk in (4, 1 << 20):
        with pytest.raises(InputError, match=message) as info:
            read_pool(path, chunk=chunk)
        assert str(info.value).startswith(str(path) + ": ") and "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_pool(tmp_path / "nope.json")


def test_memory_is_tens_of_bytes_per_image(tmp_path):
    n = 50_000
    path = tmp_path / "pool.json"
    with open(path, "w") as f:
        f.write('{"categories": [], "images": [')
        f.write(",".join(json.dumps({"id": i, "file_name": f"train/{i:08d}.jpg", "width": 640, "height": 480,
                                     "license": 1, "date_captured": "2020-01-01 00:00:00"}) for i in range(n)))
        f.write("]}")
    tracemalloc.start()
    try:
        pool = read_pool(path, chunk=1 << 16)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    images = pool["images"]
    # 8 (id) + 8 (offset) + 4 + 4 (sizes) + 18 (the name) bytes per image, all in four arrays
    arrays = images.ids.nbytes + images.offsets.nbytes + images.widths.nbytes + images.heights.nbytes + images.names.nbytes
    assert arrays == n * (8 + 4 + 4 + 18) + 8 * (n + 1)
    assert held < arrays + (2 << 20)  # array growth slack, nothing else kept
    # Transient: a sorted copy of the ids, the names' hashes (8 bytes per image each), and
    # what does not grow with the pool (lists of 65,536 names at a time, one chunk of text).
    # json.load holds about 500 bytes per image of such a pool, 630 at its peak.
    assert peak < arrays + 30 * n + (8 << 20)
