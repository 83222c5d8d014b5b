import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from det_al.data.images import ImageReadError, image_size, read_image, to_tensor


def _pattern(h: int = 6, w: int = 10) -> np.ndarray:
    """A small RGB image whose pixels are all distinct enough to check orientation."""
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.arange(w)[None, :] * 20
    a[..., 1] = np.arange(h)[:, None] * 40
    a[..., 2] = 100
    return a


def test_rgb_png_round_trip(tmp_path):
    a = _pattern()
    Image.fromarray(a).save(tmp_path / "x.png")
    out = read_image(tmp_path / "x.png")
    assert out.dtype == np.uint8 and out.shape == (6, 10, 3) and out.flags.writeable
    np.testing.assert_array_equal(out, a)
    assert image_size(tmp_path / "x.png") == (10, 6)


def test_exif_orientation_6_is_applied(tmp_path):
    # A landscape 40x20 (w x h) image with a bright left half, stored with orientation 6
    # ("rotate 90 degrees clockwise to display"): the viewer shows a 20x40 portrait with the
    # bright half on top.
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = 250
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)

    out = read_image(tmp_path / "rot.jpg")
    assert out.shape == (40, 20, 3)
    assert out[:15].mean() > 200 and out[25:].mean() < 50
    assert image_size(tmp_path / "rot.jpg") == (20, 40)


@pytest.mark.parametrize("writer", ["cv2", "pil"])
def test_16bit_grayscale_png_scaled_by_257(tmp_path, writer):
    g16 = np.array([[0, 257, 65535], [25700, 514, 1000]], np.uint16)
    path = tmp_path / "g16.png"
    if writer == "cv2":
        import cv2

        assert cv2.imwrite(str(path), g16)
    else:
        Image.fromarray(g16).save(path)
    out = read_image(path)
    expected = np.array([[0, 1, 255], [100, 2, 4]], np.uint8)  # 1000 / 257 = 3.89 -> 4
    assert out.shape == (2, 3, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)


def test_16bit_colour_png(tmp_path):
    import cv2

    c16 = np.zeros((2, 2, 3), np.uint16)
    c16[..., 2] = 65535  # red in cv2's BGR order
    cv2.imwrite(str(tmp_path / "c16.png"), c16)
    out = read_image(tmp_path / "c16.png")
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])


def test_16bit_tiff(tmp_path):
    Image.fromarray(np.full((3, 4), 65535, np.uint16)).save(tmp_path / "g16.tif")
    out = read_image(tmp_path / "g16.tif")
    assert out.shape == (3, 4, 3) and (out == 255).all()


def test_rgba_alpha_is_dropped(tmp_path):
    a = np.zeros((2, 2, 4), np.uint8)
    a[..., 0] = 200
    a[..., 3] = [[0, 255], [128, 255]]
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[..., 0], np.full((2, 2), 200))


@pytest.mark.parametrize("mode", ["L", "LA", "P", "1"])
def test_gray_palette_and_bilevel_give_three_channels(tmp_path, mode):
    gray = np.array([[0, 255], [255, 0]], np.uint8)
    image = Image.fromarray(gray).convert(mode)
    image.save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[..., 0], gray)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / "nope.jpg")
    assert info.value.reason == "file not found"
    assert info.value.path.endswith("nope.jpg")
    with pytest.raises(ImageReadError, match="file not found"):
        image_size(tmp_path / "nope.jpg")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / "empty.png")
    assert info.value.reason == "empty file"


def test_not_an_image(tmp_path):
    (tmp_path / "x.jpg").write_text("hello, not a jpeg")
    with pytest.raises(ImageReadError, match="not an image"):
        read_image(tmp_path / "x.jpg")


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(tmp_path)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file_is_refused_even_with_load_truncated_images(tmp_path, suffix, monkeypatch):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"x{suffix}")
    data = (tmp_path / f"x{suffix}").read_bytes()
    (tmp_path / f"t{suffix}").write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / f"t{suffix}")
    assert info.value.reason.startswith("truncated or corrupt image")
    assert "\n" not in info.value.reason
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the global setting is restored


def test_too_many_pixels(tmp_path):
    Image.fromarray(_pattern()).save(tmp_path / "x.png")
    with pytest.raises(ImageReadError, match="image too large: 10x6"):
        read_image(tmp_path / "x.png", max_pixels=59)
    with pytest.raises(ImageReadError, match="image too large"):
        image_size(tmp_path / "x.png", max_pixels=59)


def test_error_pickles():
    import pickle

    e = pickle.loads(pickle.dumps(ImageReadError("a/b.jpg", "empty file")))
    assert (e.path, e.reason, str(e)) == ("a/b.jpg", "empty file", "a/b.jpg: empty file")


def test_to_tensor():
    a = np.array([[[0, 255, 51]]], np.uint8)
    t = to_tensor(a)
    assert t.shape == (3, 1, 1) and t.dtype == torch.float32
    torch.testing.assert_close(t.flatten(), torch.tensor([0.0, 1.0, 0.2]))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        to_tensor(np.zeros((2, 2), np.uint8))


def test_cmyk_jpeg_and_transparent_palette(tmp_path):
    Image.new("CMYK", (3, 2), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    out = read_image(tmp_path / "cmyk.jpg")
    assert out.shape == (2, 3, 3)
    assert out[..., 0].min() > 200 and out[..., 1:].max() < 60  # red
    p = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    p.putpalette([10, 20, 30, 200, 100, 50])
    p.save(tmp_path / "p.png", transparency=0)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), [[[10, 20, 30], [200, 100, 50]]])


def test_float_tiff(tmp_path):
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif")[..., 0], [[0, 128, 255]])
