"""Dense SIFT descriptors at every pixel, at one fixed scale, in JAX (the paper's baseline).

Lowe's descriptor (IJCV 2004, section 6) without keypoint detection or orientation assignment
(the alignment cascade and dense matching use an upright descriptor at a fixed scale, as the
SDM baseline does): for every pixel, a ``4 x 4`` grid of cells of ``cell_px`` pixels around it,
each holding an 8-bin histogram of gradient orientations weighted by gradient magnitude, a
Gaussian window (sigma = half the descriptor width), trilinear soft binning (orientation linearly
between its two bins, position bilinearly between cells, via a triangular spatial kernel), then
normalise, clip at 0.2 and normalise again. Output ``[B, H, W, 128]``, unit L2 norm, same layout as
the DFF descriptors, so the cascade takes either.

Differentiable (up to the clip), jit-able, no Python loop over pixels. Image points follow the
project convention: descriptor ``[i, j]`` describes the pixel centred at ``(j + 0.5, i + 0.5)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = Any
NUM_ORIENTATIONS = 8
GRID = 4
DESCRIPTOR_DIM = GRID * GRID * NUM_ORIENTATIONS  # 128


def _gray(images: Array) -> Array:
  """``[B, H, W, C]`` -> ``[B, H, W]`` luma (ITU-R BT.601 for C = 3)."""
  if images.shape[-1] == 1:
    return images[..., 0]
  weights = jnp.asarray([0.299, 0.587, 0.114], images.dtype)
  return jnp.einsum("bhwc,c->bhw", images[..., :3], weights)


def _triangle_filter(maps: Array, half_width: int) -> Array:
  """Separable triangular (bilinear-binning) filter of support ``2 * half_width - 1`` per axis.

  ``maps``: ``[B, H, W, C]``; zero padding; returns the same shape.
  """
  taps = half_width - jnp.abs(jnp.arange(-half_width + 1, half_width, dtype=maps.dtype))
  taps = taps / half_width
  channels = maps.shape[-1]
  kernel_x = jnp.tile(taps[None, :, None, None], (1, 1, 1, channels))  # [1, k, 1, C]
  kernel_y = jnp.tile(taps[:, None, None, None], (1, 1, 1, channels))  # [k, 1, 1, C]
  dims = ("NHWC", "HWIO", "NHWC")
  out = jax.lax.conv_general_dilated(maps, kernel_x, (1, 1), "SAME", dimension_numbers=dims,
                                     feature_group_count=channels)
  return jax.lax.conv_general_dilated(out, kernel_y, (1, 1), "SAME", dimension_numbers=dims,
                                      feature_group_count=channels)


def _shift(maps: Array, dy: int, dx: int) -> Array:
  """``out[:, i, j] = maps[:, i + dy, j + dx]`` with zeros outside."""
  b, h, w, c = maps.shape
  pad = max(abs(dy), abs(dx))
  padded = jnp.pad(maps, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  return jax.lax.dynamic_slice(padded, (0, pad + dy, pad + dx, 0), (b, h, w, c))


def dense_sift(images: Array, cell_px: int = 4, smoothing_sigma_px: float = 0.8) -> Array:
  """Upright SIFT descriptors at every pixel.

  Args:
    images: ``[B, H, W, C]`` float (any intensity scale; C = 1 or 3).
    cell_px: cell side in pixels (even, >= 2); the descriptor covers ``4 * cell_px`` pixels
      (16 px at the default, i.e. Lowe's descriptor at keypoint scale ~5 px).
    smoothing_sigma_px: Gaussian pre-smoothing of the image before taking gradients.

  Returns:
    ``[B, H, W, 128]`` float32, unit L2 norm (zero where the image is flat), cell-major
    (row, column) then orientation.
  """
  if cell_px < 2 or cell_px % 2:
    raise ValueError(f"cell_px must be an even number >= 2, got {cell_px}")
  gray = _gray(jnp.asarray(images, jnp.float32))
  if smoothing_sigma_px > 0:
    radius = max(1, int(round(3 * smoothing_sigma_px)))
    x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    g = jnp.exp(-0.5 * (x / smoothing_sigma_px)**2)
    g = g / g.sum()
    gray = jax.vmap(lambda im: jax.scipy.signal.convolve2d(
        jax.scipy.signal.convolve2d(im, g[None, :], mode="same"), g[:, None], mode="same"))(gray)
  padded = jnp.pad(gray, ((0, 0), (1, 1), (1, 1)), mode="edge")
  gx = 0.5 * (padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2])
  gy = 0.5 * (padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1])
  # Where the gradient is exactly zero (flat image, zero-filled crop borders) the magnitude is 0
  # and the angle arbitrary; both are computed on a safe substitute so that neither the value
  # (a flat window gives a zero descriptor) nor the gradient (arctan2 and sqrt at 0) is NaN.
  squared = gx**2 + gy**2
  flat = squared == 0
  magnitude = jnp.where(flat, 0.0, jnp.sqrt(jnp.where(flat, 1.0, squared)))
  # Orientation in image coordinates (y down), in bins of 45 degrees, soft-assigned linearly.
  angle = jnp.arctan2(jnp.where(flat, 0.0, gy), jnp.where(flat, 1.0, gx))
  position = (angle % (2 * jnp.pi)) / (2 * jnp.pi) * NUM_ORIENTATIONS
  lower = jnp.floor(position)
  frac = position - lower
  lower = lower.astype(jnp.int32) % NUM_ORIENTATIONS
  upper = (lower + 1) % NUM_ORIENTATIONS
  bins = (jax.nn.one_hot(lower, NUM_ORIENTATIONS) * (1 - frac)[..., None]
          + jax.nn.one_hot(upper, NUM_ORIENTATIONS) * frac[..., None])
  oriented = bins * magnitude[..., None]  # [B, H, W, 8]
  # Each cell histogram, bilinearly binned: a triangular kernel of half-width cell_px.
  pooled = _triangle_filter(oriented, cell_px)
  sigma = 0.5 * GRID * cell_px
  cells = []
  # Cell centres at -1.5, -0.5, 0.5, 1.5 cells from the pixel: whole pixels, as cell_px is even.
  offsets = [int((2 * k - (GRID - 1)) * cell_px // 2) for k in range(GRID)]
  for oy in offsets:
    for ox in offsets:
      weight = jnp.exp(-(ox**2 + oy**2) / (2 * sigma**2))
      cells.append(_shift(pooled, oy, ox) * weight)
  descriptor = jnp.concatenate(cells, axis=-1)  # [B, H, W, 128]
  descriptor = descriptor / jnp.sqrt(jnp.sum(descriptor**2, -1, keepdims=True) + 1e-12)
  descriptor = jnp.minimum(descriptor, 0.2)
  return descriptor / jnp.sqrt(jnp.sum(descriptor**2, -1, keepdims=True) + 1e-12)
