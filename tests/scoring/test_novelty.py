import math

import numpy as np
import pytest
import torch

from det_al.errors import InputError
from det_al.scoring.novelty import labelled_spacing, nearest_distance, novelty


def test_novelty_hand_computed():
    labelled = np.array([[1.0, 0.0], [0.0, 2.0]])  # 0 and 90 degrees: spacing s = 1 - cos 90 = 1
    pool = np.array(
        [
            [3.0, 0.0],  # same direction as labelled 0: d = 0 -> 0
            [1.0, 1.0],  # 45 degrees: d = 1 - 1/sqrt(2) -> d / (d + 1)
            [-1.0, 0.0],  # opposite of 0, orthogonal to 90: d = 1 -> 1/2
            [-1.0, -1.0],  # max cos = -1/sqrt(2): d = 1 + 1/sqrt(2) -> d / (d + 1)
            [0.0, 0.0],  # zero embedding: cos 0 with everything, d = 1 -> 1/2
        ]
    )
    d45, d225 = 1 - 1 / math.sqrt(2), 1 + 1 / math.sqrt(2)
    expected = torch.tensor([0.0, d45 / (d45 + 1), 0.5, d225 / (d225 + 1), 0.5])
    out = novelty(pool, labelled)
    assert out.dtype == torch.float32 and out.shape == (5,)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def unit(angle_deg):
    a = math.radians(angle_deg)
    return [math.cos(a), math.sin(a)]


def test_novelty_relative_to_the_labelled_spacing():
    labelled = np.array([unit(0), unit(60), unit(90)])
    # nearest-other distances: 0 -> 1 - cos 60 = 0.5; 60 and 90 -> 1 - cos 30; median = 1 - cos 30
    s = 1 - math.cos(math.radians(30))
    assert labelled_spacing(labelled) == pytest.approx(s)
    pool = np.array([unit(30), unit(180)])
    # 30 degrees: d = 1 - cos 30 = s -> 0.5; 180 degrees: best cos is 0 (with 90): d = 1
    torch.testing.assert_close(novelty(pool, labelled), torch.tensor([0.5, 1 / (1 + s)]), atol=1e-6, rtol=0)
    torch.testing.assert_close(nearest_distance(pool, labelled), torch.tensor([s, 1.0], dtype=torch.float64))


def test_spacing_fallbacks():
    assert labelled_spacing(np.array([[1.0, 2.0]])) == 1.0  # one image
    assert labelled_spacing(np.array([[1.0, 0.0], [2.0, 0.0]])) == 1.0  # coincident directions
    # one labelled image: s = 1, orthogonal pool image d = 1 -> 0.5
    torch.testing.assert_close(novelty(np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]])), torch.tensor([0.5]))


def test_novelty_is_scale_invariant_and_chunked():
    rng = np.random.default_rng(0)
    pool, labelled = rng.random((7, 3)), rng.random((4, 3))
    a = novelty(pool, labelled)
    torch.testing.assert_close(novelty(pool * 5, labelled * 0.1), a)
    torch.testing.assert_close(novelty(pool, labelled, chunk=2), a)
    assert ((a >= 0) & (a <= 1)).all()


def test_novelty_empty_inputs():
    torch.testing.assert_close(novelty(np.ones((3, 2)), np.zeros((0, 2))), torch.ones(3))
    assert novelty(np.zeros((0, 2)), np.ones((1, 2))).shape == (0,)


def test_novelty_shape_errors():
    with pytest.raises(InputError, match="dimension"):
        novelty(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(InputError, match=r"\(N, D\)"):
        novelty(np.ones(3), np.ones((2, 3)))


def test_the_assembler_adds_novelty_in_memory_and_on_disk_alike(tmp_path):
    """Novelty is computed in one place, the assembler, for score_images(labelled=...) in memory
    and for det-al score --labelled on disk."""
    import json

    from det_al.config import config_from_dict
    from det_al.run.assemble import assemble, assemble_outputs
    from det_al.run.result_line import ResultLine

    config = config_from_dict({"model": {"name": "fasterrcnn_tiny", "num_classes": 2}, "scoring": {"image_weights": {}}})
    lines = [ResultLine(7, "a.png", record={"informativeness": 0.5, "n_objects": 1, "empty": False}, embedding=[1.0, 0.0]),
             ResultLine(3, "b.png", record={"informativeness": 0.2, "n_objects": 1, "empty": False}, embedding=[0.0, 1.0])]
    labelled = np.array([[1.0, 0.0]])  # one labelled image: s = 1; image 7 a duplicate (d = 0), 3 orthogonal (d = 1)
    ranking = assemble(lines, [{"id": 1, "name": "a"}], config, labelled=labelled).ranking
    assert [(r["image_id"], r["novelty"]) for r in ranking] == [(7, 0.0), (3, 0.5)]
    assemble_outputs(lambda: iter(lines), tmp_path, [{"id": 1, "name": "a"}], config, labelled_embeddings=labelled)
    on_disk = [json.loads(s) for s in (tmp_path / "ranking.jsonl").read_text().splitlines()]
    assert on_disk == ranking
    np.testing.assert_array_equal(np.load(tmp_path / "labelled_embeddings.npy"), labelled)
    assert "novelty" in json.loads((tmp_path / "run.json").read_text())["ranking_fields"]


def test_embed_images_matches_the_scoring_embedding(tiny_pool, tiny_checkpoint):
    """The labelled-set embeddings are the ones run_passes gives the pool (same model, same image)."""
    from det_al.models.checkpoint import load_checkpoint
    from det_al.config import PassesConfig
    from det_al.data.images import read_image
    from det_al.run.labelled import embed_images
    from det_al.inference.passes import run_passes
    from torchvision.transforms.functional import to_tensor

    model, _, _, _ = load_checkpoint(tiny_checkpoint)
    coco = {**tiny_pool["coco"], "images": tiny_pool["coco"]["images"][:2]}
    emb, ids = embed_images(model, coco, tiny_pool["root"], batch_size=2)
    assert ids == [im["id"] for im in coco["images"]] and emb.shape[0] == 2
    image = to_tensor(read_image(tiny_pool["root"] / coco["images"][1]["file_name"]))
    expected = run_passes(model, [image], PassesConfig(passes=1, dropout=0.0))[0].embedding
    np.testing.assert_allclose(emb[1], expected.numpy(), rtol=1e-4, atol=1e-5)
