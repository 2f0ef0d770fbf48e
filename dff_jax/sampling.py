"""Bilinear sampling of feature maps and images at sub-pixel points: the project's one primitive.

Every place that reads a descriptor map, or an image, at continuous positions goes through
:func:`bilinear_sample` so that there is a single pixel convention and a single border rule.

Convention (DESIGN.md section 3): points are ``(x, y)`` in pixels, x right, y down; pixel
``(i, j)`` (row, column) has its centre at ``(j + 0.5, i + 0.5)``, so an ``H x W`` map covers
``[0, W] x [0, H]``.

Border rule:

* A point is **inside** when ``0 <= x <= W`` and ``0 <= y <= H`` (closed on both sides).
* Between pixel centres the value is the bilinear interpolation of the 4 neighbouring pixels.
* In the half-pixel band between the outermost pixel centres and the map's edge the value is
  clamped to the edge (constant extrapolation of the edge pixels), so the sampled value is
  continuous over the whole inside region. Its gradient with respect to the point is zero along
  the clamped axis there.
* **Outside** (and for NaN/Inf points) the value is exactly zero, ``inside`` is False and the
  gradients with respect to the map and to the point are zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dff_jax import geometry


def _check_map(feature_map: jax.Array, name: str) -> None:
  if feature_map.ndim != 3:
    raise ValueError(
        f"{name} must have shape [H, W, D] (one map; use jax.vmap or bilinear_sample_batch for a "
        f"batch), got shape {tuple(feature_map.shape)}.")
  if feature_map.shape[0] < 1 or feature_map.shape[1] < 1:
    raise ValueError(f"{name} must have H >= 1 and W >= 1, got shape {tuple(feature_map.shape)}.")


def bilinear_sample(feature_map: jax.Array, points_px: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Bilinear interpolation of a feature map at sub-pixel image points.

  Differentiable with respect to ``feature_map`` and ``points_px``; works under ``jit``, ``vmap``
  and ``grad``. Cost: one gather of the 4 neighbours per point. See the module docstring for
  the pixel convention and the border rule (clamp to edge inside the map, zero outside).

  Args:
    feature_map: ``[H, W, D]`` float (or integer: it is promoted) map in the image frame,
      entry ``[i, j]`` belonging to the pixel centred at ``(j + 0.5, i + 0.5)``.
    points_px: ``[..., 2]`` float points ``(x, y)`` in pixels of that map.

  Returns:
    ``(values [..., D], inside [...] bool)``. ``values`` has the promoted float dtype of the map
    and the points (float32 for a uint8/bf16 map with float32 points); it is zero where
    ``inside`` is False.
  """
  feature_map, points_px = jnp.asarray(feature_map), jnp.asarray(points_px)
  _check_map(feature_map, "feature_map")
  if points_px.ndim < 1 or points_px.shape[-1] != 2:
    raise ValueError(f"points_px must have shape [..., 2] (x, y), got {tuple(points_px.shape)}.")
  height, width, depth = feature_map.shape
  batch_shape = points_px.shape[:-1]
  points = jnp.reshape(points_px, (-1, 2))
  if not jnp.issubdtype(points.dtype, jnp.floating):
    points = points.astype(jnp.float32)
  dtype = jnp.result_type(points.dtype, feature_map.dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.float32
  x, y = points[:, 0], points[:, 1]
  inside = (x >= 0) & (x <= width) & (y >= 0) & (y <= height)  # False for NaN.
  # Outside points are replaced by a safe point so neither values nor gradients see NaN/Inf.
  x = jnp.where(inside, x, 0.5)
  y = jnp.where(inside, y, 0.5)
  # Continuous index coordinates: pixel centre (j + 0.5) -> j. Clamp to edge inside the map.
  u = jnp.clip(x - 0.5, 0.0, width - 1.0)
  v = jnp.clip(y - 0.5, 0.0, height - 1.0)
  j0 = jnp.clip(jnp.floor(u).astype(jnp.int32), 0, max(width - 2, 0))
  i0 = jnp.clip(jnp.floor(v).astype(jnp.int32), 0, max(height - 2, 0))
  j1 = jnp.minimum(j0 + 1, width - 1)
  i1 = jnp.minimum(i0 + 1, height - 1)
  fx = (u - j0.astype(u.dtype)).astype(dtype)[:, None]
  fy = (v - i0.astype(v.dtype)).astype(dtype)[:, None]
  flat = jnp.reshape(feature_map, (height * width, depth)).astype(dtype)
  index = jnp.concatenate([i0 * width + j0, i0 * width + j1, i1 * width + j0, i1 * width + j1])
  corners = jnp.take(flat, index, axis=0, mode="clip").reshape(4, -1, depth)
  # Weighted form (not a + f * (b - a)): exact at pixel centres, including the last row/column.
  top = (1 - fx) * corners[0] + fx * corners[1]
  bottom = (1 - fx) * corners[2] + fx * corners[3]
  values = (1 - fy) * top + fy * bottom
  values = jnp.where(inside[:, None], values, jnp.zeros((), dtype))
  return values.reshape(batch_shape + (depth,)), inside.reshape(batch_shape)


def bilinear_sample_batch(feature_maps: jax.Array,
                          points_px: jax.Array) -> tuple[jax.Array, jax.Array]:
  """:func:`bilinear_sample` mapped over a batch.

  Args:
    feature_maps: ``[B, H, W, D]`` maps (e.g. encoder descriptors, NHWC).
    points_px: ``[B, ..., 2]`` points ``(x, y)`` in pixels, one set per map.

  Returns:
    ``(values [B, ..., D], inside [B, ...] bool)``.
  """
  feature_maps, points_px = jnp.asarray(feature_maps), jnp.asarray(points_px)
  if feature_maps.ndim != 4:
    raise ValueError(f"feature_maps must have shape [B, H, W, D], got {tuple(feature_maps.shape)}.")
  if points_px.shape[0] != feature_maps.shape[0]:
    raise ValueError(f"points_px batch {points_px.shape[0]} != feature_maps batch "
                     f"{feature_maps.shape[0]}.")
  return jax.vmap(bilinear_sample)(feature_maps, points_px)


def crop_image(image: jax.Array, box_xyxy: jax.Array, crop_size: int, supersample: int = 1,
               fill_value: float = 0.0) -> jax.Array:
  """Resamples the square ``box_xyxy`` of an image to a ``crop_size x crop_size`` crop.

  Crop pixel ``(i, j)`` takes the image value at its centre, mapped by
  :func:`dff_jax.geometry.crop_pixel_centres_in_image`, read with :func:`bilinear_sample`. An
  integer-aligned box of side ``crop_size`` therefore reproduces the image pixels exactly.

  Antialiasing (``supersample = k > 1``): each crop pixel is the mean of a ``k x k`` grid of
  samples spread evenly over its footprint (offsets ``(a + 0.5) / k - 0.5`` crop pixels), a box
  filter. Use ``k ~ ceil(box side / crop_size)`` when downscaling a lot: for an aligned box
  downscaled by an integer factor ``k``, ``supersample = k`` gives exactly the mean of each
  ``k x k`` block. ``k = 1`` (default) is plain bilinear resampling (a 2 x 2 mean at most),
  which aliases when the box is more than about twice the crop size.

  Args:
    image: ``[H, W, C]`` image (uint8 or float; values are not rescaled).
    box_xyxy: ``[4]`` square box ``(x0, y0, x1, y1)`` in image pixels (see
      :func:`dff_jax.geometry.square_box`); it may extend beyond the image.
    crop_size: static crop side in pixels.
    supersample: static number of samples per axis per crop pixel (>= 1).
    fill_value: value for crop samples outside the image.

  Returns:
    ``[crop_size, crop_size, C]`` float crop (float32 for a uint8 image), crop pixel ``[i, j]``
    centred at crop point ``(j + 0.5, i + 0.5)``.
  """
  image = jnp.asarray(image)
  _check_map(image, "image")
  if int(crop_size) != crop_size or crop_size < 1:
    raise ValueError(f"crop_size must be a positive integer, got {crop_size!r}.")
  if int(supersample) != supersample or supersample < 1:
    raise ValueError(f"supersample must be a positive integer, got {supersample!r}.")
  box_xyxy = jnp.asarray(box_xyxy, jnp.float32)
  if box_xyxy.shape != (4,):
    raise ValueError(f"box_xyxy must have shape [4] (x0, y0, x1, y1), got {box_xyxy.shape}; "
                     "use jax.vmap for a batch of boxes.")
  crop_size, supersample = int(crop_size), int(supersample)
  centres = geometry.crop_pixel_centres_in_image(box_xyxy, crop_size)  # [c, c, 2]
  step = (box_xyxy[2] - box_xyxy[0]) / crop_size  # image pixels per crop pixel.
  offsets = (jnp.arange(supersample, dtype=jnp.float32) + 0.5) / supersample - 0.5
  offset_x, offset_y = jnp.meshgrid(offsets, offsets, indexing="xy")
  offsets_px = jnp.stack([offset_x, offset_y], axis=-1).reshape(-1, 2) * step  # [k*k, 2]
  points = centres[:, :, None, :] + offsets_px  # [c, c, k*k, 2]
  values, inside = bilinear_sample(image, points)
  values = values + jnp.where(inside, 0.0, fill_value)[..., None].astype(values.dtype)
  return jnp.mean(values, axis=2)
