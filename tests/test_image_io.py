"""Tests for dff_jax.image_io with fixtures made here."""

import os
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dff_jax import image_io


def _rgb(height=6, width=5, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png_bytes(width, height, bit_depth, colour_type, raw_rows: bytes) -> bytes:
  """A minimal PNG (no filtering) written by hand, for formats Pillow cannot write."""
  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
  header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw_rows))
          + chunk(b"IEND", b""))


def test_rgb_png_and_jpeg(tmp_path):
  image = _rgb()
  Image.fromarray(image).save(tmp_path / "a.png")
  got = image_io.read_image(tmp_path / "a.png")
  assert got.dtype == np.uint8 and got.shape == (6, 5, 3)
  np.testing.assert_array_equal(got, image)
  smooth = np.full((16, 16, 3), (200, 100, 50), np.uint8)
  Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
  np.testing.assert_allclose(image_io.read_image(str(tmp_path / "a.jpg")), smooth, atol=3)


def test_rgb_to_grey_planted_luma():
  # BT.601: R 0.299, G 0.587, B 0.114 of 255 -> 76.2, 149.7, 29.1; rounded to the nearest level.
  pure = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0],
                   [200, 100, 50]], np.uint8)
  got = image_io.rgb_to_grey(pure)
  assert got.shape == (6, 1) and got.dtype == np.uint8
  np.testing.assert_array_equal(got[:, 0], [76, 150, 29, 255, 0, 124])
  # Pillow's own convert("L") (its C fixed point) on every pixel of a random image.
  image = _rgb(64, 48, seed=3)
  np.testing.assert_array_equal(image_io.rgb_to_grey(image)[..., 0],
                                np.asarray(Image.fromarray(image).convert("L")))
  with pytest.raises(ValueError, match="uint8 RGB"):
    image_io.rgb_to_grey(np.zeros((4, 4), np.uint8))


def test_read_image_grey(tmp_path):
  # A flat colour JPEG: its luma plane is the colour's BT.601 luma (124.2) up to the JPEG's own
  # rounding; only the luma plane is decoded.
  flat = np.full((32, 32, 3), (200, 100, 50), np.uint8)
  Image.fromarray(flat).save(tmp_path / "flat.jpg", quality=95)
  grey = image_io.read_image(tmp_path / "flat.jpg", grey=True)
  assert grey.shape == (32, 32, 1) and grey.dtype == np.uint8
  assert np.all(np.abs(grey.astype(int) - 124) <= 1)
  # Colour gradients: the JPEG's luma plane and the luma of its RGB decode differ by rounding
  # only (where the RGB decode clips, at sharp saturated edges, they may differ more).
  yy, xx = np.mgrid[0:96, 0:128]
  detailed = np.stack([xx * 2, yy * 2, (xx + yy) + 16 * np.sin(xx / 3.0) + 16],
                      -1).astype(np.uint8)
  Image.fromarray(detailed).save(tmp_path / "detailed.jpg", quality=90)
  plane = image_io.read_image(tmp_path / "detailed.jpg", grey=True)[..., 0].astype(int)
  luma = image_io.rgb_to_grey(image_io.read_image(tmp_path / "detailed.jpg"))[..., 0]
  assert plane.shape == (96, 128) and np.abs(plane - luma).max() <= 2
  # The luma plane is the JPEG's stored Y channel (Pillow's raw YCbCr decode, no colour
  # conversion), not the luma of its RGB decode, which clips saturated noise.
  Image.fromarray(_rgb(32, 32, seed=3)).save(tmp_path / "noise.jpg", quality=90)
  with Image.open(tmp_path / "noise.jpg") as raw:
    raw.draft("YCbCr", raw.size)
    stored_y = np.asarray(raw)[..., 0]
  plane = image_io.read_image(tmp_path / "noise.jpg", grey=True)[..., 0]
  np.testing.assert_array_equal(plane, stored_y)
  assert np.any(image_io.rgb_to_grey(image_io.read_image(tmp_path / "noise.jpg"))[..., 0]
                != stored_y)
  # PNGs: RGB converted exactly; an 8-bit grey PNG as stored; alpha composited on white first.
  image = _rgb(7, 9, seed=1)
  Image.fromarray(image).save(tmp_path / "rgb.png")
  np.testing.assert_array_equal(image_io.read_image(tmp_path / "rgb.png", grey=True),
                                image_io.rgb_to_grey(image))
  levels = np.arange(63, dtype=np.uint8).reshape(7, 9) * 4
  Image.fromarray(levels).save(tmp_path / "grey.png")
  np.testing.assert_array_equal(image_io.read_image(tmp_path / "grey.png", grey=True)[..., 0],
                                levels)
  rgba = np.zeros((2, 2, 4), np.uint8)
  rgba[0, 0] = (255, 0, 0, 255)  # opaque red; the rest transparent -> white
  Image.fromarray(rgba).save(tmp_path / "rgba.png")
  np.testing.assert_array_equal(image_io.read_image(tmp_path / "rgba.png", grey=True)[..., 0],
                                [[76, 255], [255, 255]])
  # Errors are the same one-line errors.
  with pytest.raises(image_io.ImageReadError, match="not found"):
    image_io.read_image(tmp_path / "missing.jpg", grey=True)


def test_grayscale_and_bilevel_become_rgb(tmp_path):
  gray = _rgb()[..., 0]
  Image.fromarray(gray).save(tmp_path / "g.png")
  got = image_io.read_image(tmp_path / "g.png")
  assert got.shape == (6, 5, 3)
  np.testing.assert_array_equal(got, np.repeat(gray[..., None], 3, -1))
  Image.fromarray(gray > 128).save(tmp_path / "b.png")
  np.testing.assert_array_equal(image_io.read_image(tmp_path / "b.png")[..., 1],
                                np.where(gray > 128, 255, 0))


def test_rgba_is_composited_on_white_by_default(tmp_path):
  rgba = np.zeros((2, 2, 4), np.uint8)
  rgba[0, 0] = (10, 20, 30, 255)  # opaque: unchanged.
  rgba[0, 1] = (10, 20, 30, 0)  # transparent: background.
  rgba[1, 0] = (0, 0, 0, 128)  # half: about half-way to white.
  rgba[1, 1] = (200, 0, 0, 255)
  Image.fromarray(rgba).save(tmp_path / "a.png")
  got = image_io.read_image(tmp_path / "a.png")
  np.testing.assert_array_equal(got[0, 0], [10, 20, 30])
  np.testing.assert_array_equal(got[0, 1], [255, 255, 255])
  np.testing.assert_allclose(got[1, 0], [127, 127, 127], atol=1)
  np.testing.assert_array_equal(got[1, 1], [200, 0, 0])
  black = image_io.read_image(tmp_path / "a.png", background=(0, 0, 0))
  np.testing.assert_array_equal(black[0, 1], [0, 0, 0])
  # Gray + alpha too.
  Image.fromarray(np.array([[[50, 0], [50, 255]]], np.uint8), mode="LA").save(tmp_path / "la.png")
  np.testing.assert_array_equal(image_io.read_image(tmp_path / "la.png")[0],
                                [[255, 255, 255], [50, 50, 50]])


def test_palette_with_and_without_transparency(tmp_path):
  image = _rgb(4, 4)
  palette_image = Image.fromarray(image).quantize(colors=8)
  palette_image.save(tmp_path / "p.png")
  assert Image.open(tmp_path / "p.png").mode == "P"
  expected = np.asarray(palette_image.convert("RGB"))
  np.testing.assert_array_equal(image_io.read_image(tmp_path / "p.png"), expected)
  indices = np.array([[0, 1], [1, 0]], np.uint8)
  transparent = Image.fromarray(indices, mode="P")
  transparent.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
  transparent.save(tmp_path / "t.png", transparency=0)  # index 0 (red) is transparent.
  got = image_io.read_image(tmp_path / "t.png")
  np.testing.assert_array_equal(got[0, 0], [255, 255, 255])
  np.testing.assert_array_equal(got[0, 1], [0, 0, 255])


def test_16_bit_grayscale_and_rgb_png(tmp_path):
  gray16 = np.array([[0, 257, 65535], [32896, 1000, 60000]], np.uint16)
  Image.fromarray(gray16).save(tmp_path / "g16.png")
  got = image_io.read_image(tmp_path / "g16.png")
  assert got.shape == (2, 3, 3) and got.dtype == np.uint8
  np.testing.assert_array_equal(got[..., 0], np.round(gray16 / 257).astype(np.uint8))
  np.testing.assert_array_equal(got[..., 0], got[..., 2])
  rgb16 = np.array([[[65535, 0, 32896], [257, 514, 771]]], np.uint16)  # 1 x 2, big-endian.
  rows = b"\x00" + rgb16.astype(">u2").tobytes()
  (tmp_path / "rgb16.png").write_bytes(_png_bytes(2, 1, 16, 2, rows))
  got = image_io.read_image(tmp_path / "rgb16.png")
  assert got.shape == (1, 2, 3) and got.dtype == np.uint8
  np.testing.assert_allclose(got.astype(int), np.round(rgb16 / 257), atol=1)


def test_float_and_32_bit_integer_tiffs(tmp_path):
  """Pillow's ``F`` (float) and ``I`` (int32) images: floats in [0, 1] are scaled by 255, others
  kept (NaN is 0); 32-bit integers up to 255 are kept, above it they are 16-bit data (/ 257)."""
  cases = [
      (np.array([[0.0, 0.5], [1.0, np.nan]], np.float32), [[0, 128], [255, 0]]),
      (np.array([[0.0, 2.0], [200.4, 300.0]], np.float32), [[0, 2], [200, 255]]),
      (np.array([[0, 7], [255, 100]], np.int32), [[0, 7], [255, 100]]),
      (np.array([[0, 257], [65535, 32896]], np.int32), [[0, 1], [255, 128]]),
      # Negatives clip to 0; 0.6 * 255 = 153 (not 0.6 * 256); 1.5 is not in [0, 1]; 256 is
      # above 255, so the image is 16-bit data.
      (np.array([[-0.5, 0.6], [0.25, 0.0]], np.float32), [[0, 153], [64, 0]]),
      (np.array([[1.5, -3.0], [0.6, 0.0]], np.float32), [[2, 0], [1, 0]]),
      (np.array([[256, 0], [0, 0]], np.int32), [[1, 0], [0, 0]]),
      (np.array([[256, -1000], [70000, 514]], np.int32), [[1, 0], [255, 2]]),
      (np.array([[255, -5], [0, 9]], np.int32), [[255, 0], [0, 9]]),
  ]
  for index, (pixels, expected) in enumerate(cases):
    path = tmp_path / f"{index}.tif"
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode == ("F" if pixels.dtype == np.float32 else "I")
    got = image_io.read_image(path)
    assert got.shape == (2, 2, 3) and got.dtype == np.uint8, index
    np.testing.assert_array_equal(got, np.repeat(np.asarray(expected, np.uint8)[..., None], 3,
                                                 axis=-1), err_msg=str(index))
    np.testing.assert_array_equal(image_io.read_image(path, grey=True)[..., 0], expected)


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "not found"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_text("this is text, not a JPEG\n"), "not a recognised image"),
    (lambda p: p.write_bytes(b""), "not a recognised image"),
])
def test_unusable_paths_raise_one_line_errors(tmp_path, make, message):
  path = tmp_path / "photo.jpg"
  make(path)
  with pytest.raises(image_io.ImageReadError, match=message) as info:
    image_io.read_image(path)
  text = str(info.value)
  assert str(path) in text and "\n" not in text
  assert isinstance(info.value, ValueError)


def test_truncated_jpeg(tmp_path):
  noise = _rgb(64, 64)
  Image.fromarray(noise).save(tmp_path / "full.jpg", quality=90)
  data = (tmp_path / "full.jpg").read_bytes()
  (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
  with pytest.raises(image_io.ImageReadError, match="truncated or corrupt") as info:
    image_io.read_image(tmp_path / "cut.jpg")
  assert "cut.jpg" in str(info.value) and "re-download" in str(info.value)


def test_pixel_limit_is_enforced_from_the_header(tmp_path):
  Image.fromarray(_rgb(10, 10)).save(tmp_path / "small.png")
  with pytest.raises(image_io.ImageReadError, match=r"limit of 5e-05 megapixels"):
    image_io.read_image(tmp_path / "small.png", max_pixels=50)
  assert image_io.read_image(tmp_path / "small.png", max_pixels=100).shape == (10, 10, 3)
  # A header announcing 10000 x 8000 (80 MP) with almost no data: refused for its size, not
  # reported as corrupt, so the limit is checked before decoding.
  (tmp_path / "huge.png").write_bytes(_png_bytes(10000, 8000, 8, 2, b"\x00" * 10))
  assert image_io.image_size(tmp_path / "huge.png") == (10000, 8000)
  with pytest.raises(image_io.ImageReadError, match=r"10000x8000 = 80.0 megapixels.*limit of "
                     r"50 megapixels") as info:
    image_io.read_image(tmp_path / "huge.png")
  assert "huge.png" in str(info.value)
  # Beyond Pillow's own guard (~179 MP) the message still names our limit.
  (tmp_path / "bomb.png").write_bytes(_png_bytes(20000, 20000, 8, 2, b"\x00" * 10))
  with pytest.raises(image_io.ImageReadError, match=r"limit of 50 megapixels.*Pillow"):
    image_io.read_image(tmp_path / "bomb.png")


def test_write_png_atomic_round_trip_and_overwrite(tmp_path):
  path = tmp_path / "out.png"
  image = _rgb()
  assert image_io.write_png_atomic(path, image) == path
  np.testing.assert_array_equal(image_io.read_image(path), image)
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
  gray = image[..., 0]
  image_io.write_png_atomic(str(path), gray)
  np.testing.assert_array_equal(image_io.read_image(path)[..., 2], gray)
  image_io.write_png_atomic(path, image[..., :1])
  rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], -1)
  image_io.write_png_atomic(path, rgba)
  np.testing.assert_array_equal(image_io.read_image(path), image)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temporary left.


def test_write_png_atomic_failure_keeps_old_file(tmp_path, monkeypatch):
  path = tmp_path / "out.png"
  image_io.write_png_atomic(path, _rgb(seed=1))
  before = path.read_bytes()

  def broken_save(self, *args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(Image.Image, "save", broken_save)
  with pytest.raises(OSError, match="disk full"):
    image_io.write_png_atomic(path, _rgb(seed=2))
  assert path.read_bytes() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_write_png_atomic_rejects_bad_input(tmp_path):
  with pytest.raises(ValueError, match="uint8"):
    image_io.write_png_atomic(tmp_path / "f.png", np.zeros((4, 4, 3), np.float32))
  with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
    image_io.write_png_atomic(tmp_path / "f.png", np.zeros((4, 4, 2), np.uint8))
  with pytest.raises(ValueError, match="does not exist"):
    image_io.write_png_atomic(tmp_path / "missing" / "f.png", np.zeros((4, 4, 3), np.uint8))


def test_image_io_does_not_import_jax():
  code = "import sys, dff_jax.image_io; assert 'jax' not in sys.modules, 'jax imported'"
  subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_as_rgb_converts_grey_and_rgba_arrays_as_files_are_read(tmp_path):
  """Arrays get read_image's conversions: grey replicated, RGBA composited on the background
  (planted pixels as in the file test above); RGB passes through; anything else is refused."""
  grey = np.array([[0, 50], [128, 255]], np.uint8)
  for array in (grey, grey[..., None]):
    got = image_io.as_rgb(array)
    assert got.shape == (2, 2, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.repeat(grey[..., None], 3, axis=-1))
  rgba = np.zeros((2, 2, 4), np.uint8)
  rgba[0, 0] = (10, 20, 30, 255)
  rgba[0, 1] = (10, 20, 30, 0)
  rgba[1, 0] = (0, 0, 0, 128)
  rgba[1, 1] = (200, 0, 0, 255)
  got = image_io.as_rgb(rgba)
  np.testing.assert_array_equal(got[0], [[10, 20, 30], [255, 255, 255]])
  np.testing.assert_array_equal(got[1], [[127, 127, 127], [200, 0, 0]])  # 255 * (1 - 128/255)
  np.testing.assert_array_equal(image_io.as_rgb(rgba, background=(0, 0, 0))[0, 1], [0, 0, 0])
  Image.fromarray(rgba).save(tmp_path / "a.png")
  np.testing.assert_array_equal(image_io.read_image(tmp_path / "a.png"), got)
  rgb = np.zeros((3, 4, 3), np.uint8)
  assert image_io.as_rgb(rgb) is rgb
  for bad, message in [(np.zeros((2, 2, 2), np.uint8), r"got shape \(2, 2, 2\)"),
                       (np.zeros((2, 2, 3, 1), np.uint8), "got shape"),
                       (np.zeros((2, 2, 3), np.float32), "uint8 image, got dtype float32"),
                       ([[0, 1]], "got list")]:
    with pytest.raises(ValueError, match=message):
      image_io.as_rgb(bad)
