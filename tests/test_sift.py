"""Tests of dff_jax.sift.dense_sift: layout, normalisation, equivariance, matching, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from dff_jax import sampling
from dff_jax import sift

CELL_PX = 2  # Small cells: a 8 x 8 pixel descriptor support keeps the test images tiny.
MARGIN = 10  # Pixels from the border beyond which zero padding cannot reach a descriptor.


def _texture(size, seed=0, sigma=1.5, channels=3):
  """``[size, size, channels]`` float32 smooth random texture in [0, 255]."""
  rng = np.random.default_rng(seed)
  noise = rng.normal(size=(size, size, channels))
  smooth = ndimage.gaussian_filter(noise, sigma=(sigma, sigma, 0))
  smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
  return (255.0 * smooth).astype(np.float32)


_sift = jax.jit(sift.dense_sift, static_argnames=("cell_px", "smoothing_sigma_px"))


def test_shape_dtype_and_unit_norm():
  images = np.stack([_texture(24, seed=0), _texture(24, seed=1)])
  descriptors = _sift(images, cell_px=CELL_PX)
  assert descriptors.shape == (2, 24, 24, sift.DESCRIPTOR_DIM)
  assert descriptors.dtype == jnp.float32
  np.testing.assert_allclose(jnp.linalg.norm(descriptors, axis=-1), 1.0, atol=1e-5)
  # SIFT: non-negative histograms, each entry clipped at 0.2 before the final normalisation.
  assert float(descriptors.min()) >= 0.0
  # Entries clipped at 0.2 tie at the maximum after the final normalisation.
  relative = descriptors / jnp.max(descriptors, axis=-1, keepdims=True)
  assert float(jnp.mean(jnp.sum(relative > 0.9999, axis=-1) > 1)) > 0.1


def test_grey_and_single_channel_agree():
  rgb = _texture(20, seed=3)
  grey = (rgb @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
  np.testing.assert_allclose(_sift(rgb[None], cell_px=CELL_PX),
                             _sift(grey[None], cell_px=CELL_PX), atol=1e-5)


def test_flat_image_gives_zero_descriptor_with_finite_gradient():
  flat = jnp.full((1, 32, 32, 1), 7.0)
  descriptors = _sift(flat, cell_px=CELL_PX)
  # Interior of a constant image (the zero-padded smoothing makes the border non-flat).
  np.testing.assert_array_equal(descriptors[0, 12:20, 12:20], 0.0)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(sift.dense_sift(x, cell_px=CELL_PX) ** 2)))(flat)
  assert bool(jnp.all(jnp.isfinite(grad)))


def test_gradient_finite_for_partly_flat_image():
  image = jnp.zeros((1, 24, 24, 3)).at[:, 8:16, 8:16].set(_texture(8, seed=2))
  weights = jax.random.normal(jax.random.key(0), (1, 24, 24, sift.DESCRIPTOR_DIM))
  grad = jax.jit(jax.grad(lambda x: jnp.sum(sift.dense_sift(x, cell_px=CELL_PX) * weights)))(
      image)
  assert bool(jnp.all(jnp.isfinite(grad)))
  assert float(jnp.abs(grad).max()) > 0.0


def test_jit_matches_eager():
  image = _texture(16, seed=4)[None]
  np.testing.assert_allclose(sift.dense_sift(image, cell_px=CELL_PX),
                             _sift(image, cell_px=CELL_PX), atol=1e-6)


def test_integer_shift_equivariance():
  big = _texture(48, seed=5)
  dy, dx = 3, -2
  a = big[8:40, 8:40]
  b = big[8 + dy:40 + dy, 8 + dx:40 + dx]  # b[i, j] = a[i + dy, j + dx]
  desc_a, desc_b = _sift(np.stack([a, b]), cell_px=CELL_PX)
  inner = slice(MARGIN, 32 - MARGIN)
  shifted = slice(MARGIN + dy, 32 - MARGIN + dy), slice(MARGIN + dx, 32 - MARGIN + dx)
  np.testing.assert_allclose(desc_b[inner, inner], desc_a[shifted], atol=1e-5)


def test_upright_rotation_by_90_degrees_permutes_but_changes_descriptor():
  image = _texture(32, seed=6)
  rotated = np.rot90(image, k=1, axes=(0, 1)).copy()  # rotated[i, j] = image[j, W - 1 - i]
  desc, desc_rot = _sift(np.stack([image, rotated]), cell_px=CELL_PX)
  for i, j in [(14, 15), (16, 12), (13, 17)]:
    d = np.asarray(desc[i, j])
    d_rot = np.asarray(desc_rot[32 - 1 - j, i])  # Same image content.
    # Upright: the descriptor of the same point changes with the image orientation ...
    assert np.linalg.norm(d - d_rot) > 0.3
    # ... but an exact 90-degree rotation of the pixel grid only permutes cells and bins.
    np.testing.assert_allclose(np.sort(d), np.sort(d_rot), atol=1e-5)


def test_nearest_neighbour_after_subpixel_translation():
  image = jnp.asarray(_texture(64, seed=7, sigma=2.0))
  offset = jnp.asarray([2.5, -1.5])  # Image pixels; crop b shows the content moved by -offset.
  box_a = jnp.asarray([8.0, 8.0, 56.0, 56.0])
  box_b = box_a + jnp.concatenate([offset, offset])
  crops = jnp.stack([sampling.crop_image(image, box_a, 48), sampling.crop_image(image, box_b, 48)])
  desc_a, desc_b = _sift(crops, cell_px=4)
  search = desc_b[MARGIN:48 - MARGIN, MARGIN:48 - MARGIN].reshape(-1, sift.DESCRIPTOR_DIM)
  size = 48 - 2 * MARGIN
  for i, j in [(20, 20), (24, 18), (18, 27), (27, 25)]:
    distance = jnp.sum((search - desc_a[i, j]) ** 2, axis=-1)
    best = int(jnp.argmin(distance))
    found = np.array([best % size + MARGIN + 0.5, best // size + MARGIN + 0.5])  # (x, y)
    expected = np.array([j + 0.5, i + 0.5]) - np.asarray(offset)
    assert np.max(np.abs(found - expected)) <= 1.0, (i, j, found, expected)


def test_bad_cell_size_raises():
  with pytest.raises(ValueError, match="cell_px"):
    sift.dense_sift(jnp.zeros((1, 8, 8, 1)), cell_px=3)
