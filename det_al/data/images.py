"""Reading pool images as a viewer shows them: ``[H, W, 3]`` uint8 RGB, or a clear reason why not.

Every image det_al scores or trains on goes through :func:`read_image`, so that all of det_al
sees the same pixels:

- EXIF orientation is applied (``PIL.ImageOps.exif_transpose``): an image taken with the camera
  on its side is scored upright, and its width and height are those after rotation. A broken
  EXIF block is ignored (as viewers do), with a debug log line.
- Grayscale (``L``, ``1``) is repeated to 3 channels; palette (``P``), ``CMYK`` and ``YCbCr``
  are converted to RGB.
- Alpha (``RGBA``, ``LA``, ``PA``, palette transparency) is **dropped**, not composited: the
  colour channels are kept as stored. This is what ``PIL.Image.convert("RGB")`` and
  ``torchvision.io.decode_image(mode=RGB)`` do, i.e. what the usual training pipelines see.
- 16-bit images (``I;16`` PNG/TIFF, 32-bit ``I``) are mapped to 8 bits with a fixed scale,
  ``value / 257`` (65535 -> 255), clipped to ``[0, 65535]`` first; it does not depend on the
  image's content, so the same scene gives the same pixels in every file. Float images (``F``)
  are taken as ``[0, 1]`` when their maximum is at most 1, else divided by their maximum.
  16-bit colour PNG/TIFF are reduced to 8 bits by Pillow itself.
- Multi-frame files (GIF, TIFF) give their first frame.

Missing, empty, unrecognised, truncated or corrupt files and images above ``max_pixels`` raise
:class:`ImageReadError` with a one-line ``reason``. A truncated file is never accepted, even if
someone set ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` globally.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torch import Tensor

from det_al.errors import InputError

logger = logging.getLogger(__name__)

#: Images with more pixels than this are refused (Pillow's own decompression-bomb error limit).
MAX_PIXELS = 2 * 89_478_485

#: File extensions treated as images when listing a folder (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")

_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # orientations that swap width and height


class ImageReadError(Exception):
    """An image file that cannot be read; ``reason`` is one short line, ``path`` the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason))


@contextlib.contextmanager
def _strict_truncation() -> Iterator[None]:
    """Refuse truncated files for the duration of the block, whatever the global setting."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _check_file(path: str | os.PathLike) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot read: {e.strerror}") from None
    if not os.path.isfile(path):
        raise ImageReadError(path, "not a regular file")
    if st.st_size == 0:
        raise ImageReadError(path, "empty file")


def _open(path: str | os.PathLike, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and check the pixel count before anything is decoded."""
    _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image or unsupported format") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"image too large: {e}") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot read: {e.strerror or e}") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageReadError(
            path, f"image too large: {width}x{height} pixels (limit {max_pixels})"
        )
    if width == 0 or height == 0:
        image.close()
        raise ImageReadError(path, f"image has no pixels ({width}x{height})")
    return image


def _exif_transpose(image: Image.Image, path: str | os.PathLike) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception as e:  # a broken EXIF block: show the stored pixels, as viewers do
        logger.debug("%s: ignoring unreadable EXIF orientation (%s)", path, e)
        return image


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB from a decoded Pillow image of any mode (see the module doc)."""
    mode = image.mode
    if mode == "RGB":
        return np.array(image, dtype=np.uint8)
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image)
        if values.ndim == 3:  # unusual multi-channel integer modes: keep the first channel
            values = values[..., 0]
        if mode == "F":
            values = values.astype(np.float64)
            values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
            peak = float(values.max(initial=0.0))
            scaled = values * 255.0 if peak <= 1.0 else values * (255.0 / peak)
        else:
            scaled = np.clip(values.astype(np.float64), 0, 65535) / 257.0
        gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("L", "1"):
        gray = np.asarray(image.convert("L"), dtype=np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    # RGBA, LA, PA, P (with or without transparency), CMYK, YCbCr, LAB, HSV, RGBX...:
    # Pillow's conversion drops alpha and expands palettes.
    return np.array(image.convert("RGB"), dtype=np.uint8)


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as a viewer shows it.

    Returns:
        ``[H, W, 3]`` uint8 RGB array, EXIF orientation applied (``H`` and ``W`` after rotation).

    Raises:
        ImageReadError: the file is missing, empty, not an image, truncated or corrupt, or has
            more than ``max_pixels`` pixels.
    """
    image = _open(path, max_pixels)
    try:
        with _strict_truncation():
            image.load()
        array = _to_rgb_array(_exif_transpose(image, path))
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageReadError(path, f"truncated or corrupt image: {_one_line(e)}") from None
    except MemoryError:
        raise ImageReadError(path, "out of memory while decoding") from None
    finally:
        image.close()
    return np.ascontiguousarray(array)


def image_size(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`read_image` would return it (after EXIF).

    Reads the header and the EXIF block only, not the pixels: cheap, but a file truncated after
    its header is only caught by :func:`read_image`.

    Raises:
        ImageReadError: the file is missing, empty, not an image or too large.
    """
    image = _open(path, max_pixels)
    try:
        width, height = image.size
        try:
            orientation = image.getexif().get(_EXIF_ORIENTATION)
        except Exception as e:  # broken EXIF: read_image ignores it too
            logger.debug("%s: ignoring unreadable EXIF orientation (%s)", path, e)
            orientation = None
    finally:
        image.close()
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return width, height


def outside_root(file_name: str, image_root: str | os.PathLike) -> bool:
    """Whether ``image_root / file_name`` lies outside ``image_root`` (``../x``, ``a/../../x``, or
    an absolute path elsewhere). The test is on the path's text, so a symbolic link inside the
    root (a common way to assemble a data set) is followed as the user set it up."""
    root = os.path.abspath(image_root)
    path = os.path.normpath(os.path.join(root, file_name))
    return os.path.commonpath([root, path]) != root


def check_image_root(image_root: str | os.PathLike) -> None:
    """Raise :class:`InputError` naming ``image_root`` unless it is an existing folder."""
    if not os.path.isdir(image_root):
        raise InputError("image root not found" if not os.path.exists(image_root) else "image root is not a folder", image_root)


def check_file_names(
    images: Iterable[dict], image_root: str | os.PathLike, source: str | os.PathLike | None = None,
    allow_outside_root: bool = False,
) -> None:
    """Refuse COCO images whose ``file_name`` escapes ``image_root`` (see :func:`outside_root`),
    unless ``allow_outside_root``: a COCO file from elsewhere must not make det_al read (and
    send to an annotation tool, or embed in a report) arbitrary files of this machine.

    Raises:
        InputError: naming ``source`` and the first such image.
    """
    if allow_outside_root:
        return
    for i, image in enumerate(images):
        name = image["file_name"]
        if (name.startswith("/") or ".." in name) and outside_root(name, image_root):
            raise outside_root_error(i, image["id"], name, image_root, source)


def outside_root_error(
    index: int, image_id: int, file_name: str, image_root: str | os.PathLike, source: str | os.PathLike | None
) -> InputError:
    return InputError(
        f"images[{index}] (id {image_id}): file_name {file_name!r} is outside the image root "
        f"{os.fspath(image_root)} (--allow-outside-root reads it anyway)", source,
    )


def to_tensor(array: np.ndarray) -> Tensor:
    """``[H, W, 3]`` uint8 array -> ``[3, H, W]`` float32 tensor in ``[0, 1]`` (torchvision's input)."""
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"expected a uint8 array of shape (H, W, 3), got {array.dtype} {tuple(array.shape)}"
        )
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255.0)


def _one_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return " ".join(text.split())
