"""COCO segmentations: RLE round trips through pycocotools, polygons, and malformed input."""

import numpy as np
import pytest
import torch

from det_al.data.segmentation import mask_to_rle, masks_to_rles, rle_to_mask, segmentation_to_mask


def test_mask_rle_round_trips():
    masks = torch.zeros(3, 5, 4)
    masks[0, 1:3, 1:4] = 0.9
    masks[1, 4, 0] = 0.6
    masks[2] = 0.4  # below the 0.5 threshold: empty
    rles = masks_to_rles(masks)
    assert len(rles) == 3
    np.testing.assert_array_equal(rle_to_mask(rles[0]), (masks[0] > 0.5).numpy())
    assert rle_to_mask(rles[1]).sum() == 1 and rle_to_mask(rles[2]).sum() == 0
    assert masks_to_rles(np.zeros((0, 5, 4), bool)) == []
    # integer masks: non-zero is inside
    np.testing.assert_array_equal(rle_to_mask(mask_to_rle(np.eye(3, dtype=np.uint8))), np.eye(3, dtype=bool))
    # bytes counts are accepted too
    raw = dict(rles[0], counts=rles[0]["counts"].encode())
    np.testing.assert_array_equal(rle_to_mask(raw), rle_to_mask(rles[0]))


def test_segmentation_to_mask_polygon_rle_and_uncompressed():
    # square polygon covering pixels x in [2, 5), y in [1, 3)
    poly = [[2, 1, 5, 1, 5, 3, 2, 3]]
    mask = segmentation_to_mask(poly, 6, 7)
    assert mask.shape == (6, 7) and mask.dtype == bool
    assert mask[1:3, 2:5].all() and mask.sum() == mask[1:4, 2:6].sum()
    # uncompressed RLE (column-major runs): 6x7 with the first 3 pixels set -> column 0, rows 0..2
    uncompressed = {"size": [6, 7], "counts": [0, 3, 39]}
    expected = np.zeros((6, 7), bool)
    expected[0:3, 0] = True
    np.testing.assert_array_equal(segmentation_to_mask(uncompressed, 6, 7), expected)
    np.testing.assert_array_equal(segmentation_to_mask(mask_to_rle(expected), 6, 7), expected)
    # degenerate polygons cover nothing
    assert segmentation_to_mask([[1, 1, 2, 2]], 6, 7).sum() == 0
    assert segmentation_to_mask([], 6, 7).sum() == 0
    with pytest.raises(ValueError, match="size"):
        segmentation_to_mask(mask_to_rle(expected), 7, 6)
    with pytest.raises(ValueError, match="unsupported"):
        segmentation_to_mask("nope", 6, 7)


@pytest.mark.parametrize(
    "segmentation,message",
    [
        ([[1, 2, "a", 4, 5, 6]], "lists of numbers"),
        ([[1, 2, None, 4, 5, 6]], "lists of numbers"),
        ([[float("nan"), 1, 2, 3, 4, 5]], "finite"),
        ({"size": [4, 4], "counts": [3, 2]}, "cover 5 pixels, expected 4x4 = 16"),
        ({"size": [4, 4], "counts": [3, -1, 14]}, "non-negative"),
        ({"size": [4, 4], "counts": "garbage!!"}, "invalid character"),
        ({"size": [4, 4], "counts": ""}, "cover 0 pixels"),
        ({"size": [4, 4], "counts": 12}, "must be a string or a list"),
        ({"size": [4], "counts": "ab"}, "size"),
    ],
)
def test_malformed_segmentations_are_value_errors(segmentation, message):
    with pytest.raises(ValueError, match=message):
        segmentation_to_mask(segmentation, 4, 4)


def test_flat_and_far_out_polygons():
    # a flat list is one polygon; x in [0, 2), y in [0, 2)
    assert segmentation_to_mask([0, 0, 2, 0, 2, 2, 0, 2], 4, 4).sum() == segmentation_to_mask([[0, 0, 2, 0, 2, 2, 0, 2]], 4, 4).sum() > 0
    # vertices at 1e12 are clipped instead of exhausting memory: the polygon covers the image
    huge = [[-1e12, -1e12, 1e12, -1e12, 1e12, 1e12, -1e12, 1e12]]
    assert segmentation_to_mask(huge, 4, 4).all()
