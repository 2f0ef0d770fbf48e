"""Robust image reading and atomic PNG writing (NumPy + Pillow, the decoder imageio uses; no JAX).

:func:`read_image` always returns ``[H, W, 3]`` uint8 RGB, whatever the file holds:

* grayscale (``L``, ``1``, ``I``, ``F``) is replicated to three channels;
* palette (``P``) images are expanded through their palette;
* 16-bit images (grayscale ``I;16`` or 48/64-bit RGB(A) PNGs) are scaled to 8 bits
  (``round(v / 257)``, so 65535 -> 255);
* an alpha channel (``RGBA``, ``LA``, ``PA``, palette transparency) is **composited on a
  background**, white by default (``background=(255, 255, 255)``): transparent pixels become
  the background instead of whatever colour happened to be stored under them;
* CMYK, YCbCr, ... are converted to RGB; for animations and multi-page files the first frame is
  read; EXIF orientation is **ignored** (pixels as stored, which is what data-set annotations
  refer to).

Problems raise :class:`ImageReadError` (a ``ValueError``) with a one-line message that names the
file and says what to do: a missing file, a directory, a file that is not an image (e.g. text
named ``.jpg``), a truncated or corrupt file, and an image above the pixel limit. The limit
(default 50 megapixels) is checked from the header, before the pixels are decoded.

``read_image(path, grey=True)`` returns ``[H, W, 1]`` uint8 luma instead (ITU-R BT.601,
:data:`BT601_WEIGHTS`, what a grey DFF encoder reads): a JPEG is then decoded to its luma plane
alone (the decoder skips the two chroma planes and the colour conversion, about 3x less work on
450 px photos), any other file is read as above and converted.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Tuple

import numpy as np
from PIL import Image

from dff_jax import file_io

DEFAULT_MAX_PIXELS = 50_000_000
# ITU-R BT.601 luma weights of (R, G, B): the luma plane of a JPEG, and the grey conversion of
# the DFF encoder's input (dff_jax.encoder.preprocess_images).
BT601_WEIGHTS = (0.299, 0.587, 0.114)


class ImageReadError(ValueError):
  """An image file cannot be used; the message names the file and what to do."""


def image_size(path: str | os.PathLike) -> Tuple[int, int]:
  """``(width, height)`` in pixels from the file header, without decoding the pixels.

  Raises:
    ImageReadError: missing file, directory, or not a recognised image.
  """
  path = _require_file(path)
  with _open(path, max_pixels=None) as image:
    return image.size


def _require_file(path: str | os.PathLike) -> Path:
  path = Path(path)
  if not path.exists():
    raise ImageReadError(f"{path}: image file not found; check the path.")
  if path.is_dir():
    raise ImageReadError(f"{path}: is a directory, not an image file; pass the image's path.")
  return path


def _open(path: Path, max_pixels: int | None) -> Image.Image:
  """Opens the header lazily and enforces the pixel limit before any decoding."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      image = Image.open(path)
  except Image.DecompressionBombError as error:
    limit = "" if max_pixels is None else f"above the limit of {max_pixels / 1e6:g} megapixels "
    raise ImageReadError(f"{path}: image {limit}and refused by Pillow's decompression-bomb guard "
                         f"({error}); downscale it first.") from None
  except Image.UnidentifiedImageError:
    raise ImageReadError(f"{path}: not a recognised image (unknown format or not an image "
                         "at all); check the file or re-export it as PNG/JPEG.") from None
  except OSError as error:
    raise ImageReadError(f"{path}: cannot open image ({error}); check permissions and the "
                         "file.") from None
  width, height = image.size
  if max_pixels is not None and width * height > max_pixels:
    image.close()
    raise ImageReadError(
        f"{path}: image is {width}x{height} = {width * height / 1e6:.1f} megapixels, above the "
        f"limit of {max_pixels / 1e6:g} megapixels; downscale it (from Python, "
        f"read_image(path, max_pixels=...) takes a larger limit).")
  return image


def _to_uint8(array: np.ndarray) -> np.ndarray:
  """Scales the pixels of a Pillow ``I``, ``I;16`` or ``F`` image to uint8: floats in [0, 1]
  times 255 (others as they are; NaN is 0), 16-bit data (``uint16``, or any integer above 255)
  ``round(v / 257)``, other integers clipped to [0, 255]."""
  if np.issubdtype(array.dtype, np.floating):
    scale = 255.0 if np.nanmax(array, initial=0.0) <= 1.0 else 1.0
    return np.clip(np.nan_to_num(array) * scale + 0.5, 0, 255).astype(np.uint8)
  # 16-bit data (uint16, or int32 mode "I" holding 16-bit values): round(v / 257).
  if array.dtype.itemsize >= 2 and (array.dtype == np.uint16 or array.max(initial=0) > 255):
    return np.clip((array.astype(np.float64) / 257.0) + 0.5, 0, 255).astype(np.uint8)
  return np.clip(array, 0, 255).astype(np.uint8)


def _to_rgb(image: Image.Image, background: Tuple[int, int, int]) -> np.ndarray:
  """Decoded PIL image -> ``[H, W, 3]`` uint8, compositing any alpha on ``background``."""
  mode = image.mode
  if mode == "P" and "transparency" in image.info:
    image, mode = image.convert("RGBA"), "RGBA"
  if mode in ("I", "F") or mode.startswith("I;16"):
    return as_rgb(_to_uint8(np.asarray(image)))
  if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    return as_rgb(np.asarray(image.convert("RGBA"), dtype=np.uint8), background)
  if mode != "RGB":
    image = image.convert("RGB")
  return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def as_rgb(image: np.ndarray, background: Tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
  """A uint8 image array as ``[H, W, 3]`` RGB, with :func:`read_image`'s conversions.

  ``[H, W]`` and ``[H, W, 1]`` grey are replicated to three channels; ``[H, W, 4]`` RGBA is
  composited on ``background`` (``round(rgb * a + background * (1 - a))``, ``a = alpha / 255``);
  ``[H, W, 3]`` is returned as it is (no copy). Any other shape or dtype raises a ``ValueError``
  saying what is expected (floats are refused: their range, [0, 1] or [0, 255], is ambiguous).
  """
  if not isinstance(image, np.ndarray):
    raise ValueError(f"expected an [H, W, 3] uint8 NumPy image, got {type(image).__name__}")
  if image.dtype != np.uint8:
    raise ValueError(f"expected a uint8 image, got dtype {image.dtype} (scale it to 0-255 and "
                     "convert with .astype(np.uint8))")
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"expected an [H, W, 3] RGB image ([H, W] / [H, W, 1] grey and "
                     f"[H, W, 4] RGBA are converted), got shape {image.shape}")
  if image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  if image.shape[-1] == 4:
    alpha = image[..., 3:].astype(np.float32) / 255.0
    composite = (image[..., :3].astype(np.float32) * alpha
                 + np.asarray(background, np.float32) * (1.0 - alpha))
    return np.clip(composite + 0.5, 0, 255).astype(np.uint8)
  return image


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
  """``[..., 3]`` uint8 RGB -> ``[..., 1]`` uint8 BT.601 luma, rounded to the nearest level.

  Pillow's own conversion (``Image.convert("L")``), in the same 16-bit fixed point:
  ``(19595 R + 38470 G + 7471 B + 2 ** 15) >> 16``, the weights :data:`BT601_WEIGHTS` to within
  1e-5.
  """
  rgb = np.asarray(rgb)
  if rgb.shape[-1:] != (3,) or rgb.dtype != np.uint8:
    raise ValueError(f"rgb_to_grey needs [..., 3] uint8 RGB, got {rgb.shape} {rgb.dtype}")
  weights = np.asarray([19595, 38470, 7471], np.uint32)
  luma = (rgb.astype(np.uint32) * weights).sum(axis=-1, dtype=np.uint32) + (1 << 15)
  return (luma >> 16).astype(np.uint8)[..., None]


def _to_grey(image: Image.Image, background: Tuple[int, int, int]) -> np.ndarray:
  """Decoded PIL image -> ``[H, W, 1]`` uint8 luma (an 8-bit grey image as stored)."""
  if image.mode == "L":
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))[..., None]
  return rgb_to_grey(_to_rgb(image, background))


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               background: Tuple[int, int, int] = (255, 255, 255),
               grey: bool = False) -> np.ndarray:
  """Reads any common image file as RGB uint8 (see the module docstring for the conversions).

  Args:
    path: image file (PNG, JPEG, BMP, GIF, TIFF, WebP, ... anything Pillow decodes).
    max_pixels: refuse images with more than this many pixels (checked from the header before
      decoding); ``None`` disables the check. Pillow's own decompression-bomb guard (about
      179 megapixels by default, ``PIL.Image.MAX_IMAGE_PIXELS``) still applies on top.
    background: RGB colour under transparent pixels.
    grey: return BT.601 luma ``[H, W, 1]`` instead of RGB (a colour JPEG is decoded to its
      luma plane only; see the module docstring).

  Returns:
    ``[H, W, 3]`` uint8 RGB (``[H, W, 1]`` luma with ``grey``), row ``i`` / column ``j`` is the
    pixel centred at ``(j + 0.5, i + 0.5)`` in the image frame.

  Raises:
    ImageReadError: missing file, directory, not an image, truncated/corrupt data, too large.
  """
  path = _require_file(path)
  image = _open(path, max_pixels)
  try:
    try:
      if grey:
        image.draft("L", image.size)  # JPEG: decode the luma plane alone; others: no-op
      image.load()
      return _to_grey(image, background) if grey else _to_rgb(image, background)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
      message = str(error) or type(error).__name__
      raise ImageReadError(f"{path}: image data is truncated or corrupt ({message}); "
                           "re-download or re-export the file.") from None
  finally:
    image.close()


def write_png_atomic(path: str | os.PathLike, image: np.ndarray) -> Path:
  """Writes a PNG so that readers never see a partial file.

  The image is written to a temporary file in the destination's directory, flushed to disk, then
  renamed over ``path`` with ``os.replace`` (atomic on POSIX and Windows within one file
  system). On any error the temporary file is removed and an existing ``path`` is untouched.

  Args:
    path: destination ``.png`` (its directory must exist).
    image: ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` uint8.

  Returns:
    ``path`` as a ``Path``.
  """
  path = Path(path)
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"write_png_atomic needs a uint8 image, got {image.dtype}; convert with "
                     "np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8) for [0, 1] floats.")
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
    raise ValueError(f"write_png_atomic needs an [H, W], [H, W, 3] or [H, W, 4] image, got shape "
                     f"{image.shape}.")
  if not path.parent.is_dir():
    raise ValueError(f"{path}: directory {path.parent} does not exist; create it first.")
  buffer = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
  return file_io.write_bytes_atomic(path, buffer.getvalue())
