"""Dense descriptor matching, matching statistics and descriptor visualisation.

The evaluation of the paper's first claim (DFF matches face pixels across views better than a
general descriptor such as SIFT) is nearest-descriptor search: for a point of view A, the pixel
of view B's face region whose descriptor is most similar (largest cosine similarity; all
descriptors here are L2-normalised, so this is the smallest Euclidean distance) is its match.
Everything is vectorised as one ``[K, D] @ [D, H * W]`` product per view pair.

Conventions (DESIGN.md section 3): image points are ``(x, y)`` pixels, x right, y down; pixel
``(i, j)`` (row, column) has its centre at ``(j + 0.5, i + 0.5)``. Descriptor maps are
``[H, W, D]`` (one view) or ``[B, H, W, D]`` (NHWC), entry ``[i, j]`` belonging to pixel
``(i, j)``. A match is always a pixel centre (no sub-pixel refinement), so a perfect descriptor
has errors up to ``sqrt(2) / 2`` px from the quantisation alone.

Contents:

* matching (JAX, jit-able, static shapes): :func:`sample_descriptors`, :func:`match_descriptors`,
  :func:`match_points`, :func:`pixel_centres`;
* raw normalised patches as a baseline descriptor (JAX): :func:`patch_descriptors`;
* statistics (NumPy): :func:`yaw_difference_bin`, :func:`summarise_matches`;
* PCA-to-RGB visualisation (NumPy): :func:`fit_pca`, :func:`project_pca`, :func:`pca_rgb`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dff_jax import sampling

Array = Any

# ITU-R BT.601 luma weights (R, G, B), as dff_jax.encoder and dff_jax.sift use.
_LUMA = (0.299, 0.587, 0.114)
PCK_THRESHOLDS_PX = (1.0, 2.0, 4.0, 8.0)
# Bins of |yaw_a - yaw_b| in degrees: [0, 30), [30, 60), [60, 90), [90, inf).
YAW_DIFFERENCE_BINS_DEG = (("0-30", 0.0, 30.0), ("30-60", 30.0, 60.0), ("60-90", 60.0, 90.0),
                           (">90", 90.0, float("inf")))
# Aggregates reported beside the bins: every pair, and the target set (difference >= 30 deg).
AGGREGATE_BINS_DEG = (("all", 0.0, float("inf")), (">=30", 30.0, float("inf")))


# ----------------------------------------------------------------------------------------------
# Matching
# ----------------------------------------------------------------------------------------------


def _normalise(x: Array, eps: float = 1e-12) -> Array:
  """``x / ||x||`` over the last axis (zero vectors stay zero)."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), eps))


def pixel_centres(height: int, width: int) -> Array:
  """``[H, W, 2]`` float32 pixel centres ``(j + 0.5, i + 0.5)`` of an ``H x W`` map."""
  x = jnp.arange(width, dtype=jnp.float32) + 0.5
  y = jnp.arange(height, dtype=jnp.float32) + 0.5
  grid_x, grid_y = jnp.meshgrid(x, y, indexing="xy")
  return jnp.stack([grid_x, grid_y], axis=-1)


def sample_descriptors(descriptor_map: Array, points_px: Array) -> Tuple[Array, Array]:
  """Unit-norm descriptors at sub-pixel points (bilinear, then re-normalised).

  Args:
    descriptor_map: ``[H, W, D]`` float map, image frame.
    points_px: ``[K, 2]`` float points ``(x, y)`` in pixels of that map.

  Returns:
    ``(descriptors [K, D] float32, inside [K] bool)``; a point outside the map has a zero
    descriptor and ``inside`` False (see :func:`dff_jax.sampling.bilinear_sample`).
  """
  values, inside = sampling.bilinear_sample(jnp.asarray(descriptor_map, jnp.float32),
                                            jnp.asarray(points_px, jnp.float32))
  return _normalise(values), inside


def match_descriptors(query: Array, target_map: Array, target_mask: Array,
                      chunk_size: Optional[int] = None) -> Tuple[Array, Array]:
  """Nearest target pixel (largest cosine similarity) of each query descriptor.

  Args:
    query: ``[K, D]`` float descriptors (normalised here; zero rows match arbitrarily).
    target_map: ``[H, W, D]`` float descriptor map of the other view (rows normalised here).
    target_mask: ``[H, W]`` bool, the pixels a match may land on (e.g. the face region);
      if empty, every pixel is a candidate.
    chunk_size: optional static number of queries per ``[chunk, D] @ [D, H * W]`` product
      (bounds memory for large K; default all at once).

  Returns:
    ``(matched_px [K, 2] float32, similarity [K] float32)``: the matched pixel centre
    ``(j + 0.5, i + 0.5)`` in the target frame and its cosine similarity (-inf never
    appears as long as the mask has a pixel).
  """
  query = _normalise(jnp.asarray(query, jnp.float32))
  target_map = jnp.asarray(target_map, jnp.float32)
  if target_map.ndim != 3 or query.ndim != 2 or query.shape[-1] != target_map.shape[-1]:
    raise ValueError(f"match_descriptors needs query [K, D] and target_map [H, W, D] with the "
                     f"same D, got {query.shape} and {target_map.shape}.")
  height, width, depth = target_map.shape
  if tuple(jnp.shape(target_mask)) != (height, width):
    raise ValueError(f"target_mask must have shape {(height, width)} (the map's H, W), got "
                     f"{tuple(jnp.shape(target_mask))}.")
  targets = _normalise(target_map.reshape(height * width, depth))
  mask = jnp.asarray(target_mask, bool).reshape(-1)
  mask = jnp.where(jnp.any(mask), mask, True)
  centres = pixel_centres(height, width).reshape(-1, 2)

  def best(queries):
    similarity = jnp.matmul(queries, targets.T, precision=jax.lax.Precision.HIGHEST)
    similarity = jnp.where(mask[None, :], similarity, -jnp.inf)
    index = jnp.argmax(similarity, axis=-1)
    return centres[index], jnp.take_along_axis(similarity, index[:, None], axis=-1)[:, 0]

  num = query.shape[0]
  if chunk_size is None or chunk_size >= num:
    return best(query)
  pad = (-num) % chunk_size
  padded = jnp.pad(query, ((0, pad), (0, 0))).reshape(-1, chunk_size, depth)
  matched, similarity = jax.lax.map(best, padded)
  return matched.reshape(-1, 2)[:num], similarity.reshape(-1)[:num]


def match_points(map_a: Array, points_a_px: Array, map_b: Array, mask_b: Array
                 ) -> Tuple[Array, Array, Array]:
  """Matches of view-A points in view B by nearest descriptor over B's region ``mask_b``.

  Args:
    map_a, map_b: ``[H, W, D]`` descriptor maps of the two views (image frames).
    points_a_px: ``[K, 2]`` points ``(x, y)`` in view A's pixels.
    mask_b: ``[H, W]`` bool candidate pixels of view B (its face region).

  Returns:
    ``(matched_b_px [K, 2], similarity [K], inside [K] bool)``; ``inside`` is False for
    points outside map A (their match is meaningless).
  """
  query, inside = sample_descriptors(map_a, points_a_px)
  matched, similarity = match_descriptors(query, map_b, mask_b)
  return matched, similarity, inside


def match_errors_px(matched_px: Array, target_px: Array) -> Array:
  """``[K]`` Euclidean distances in pixels between matches and ground truth (``[K, 2]`` each)."""
  return jnp.linalg.norm(jnp.asarray(matched_px) - jnp.asarray(target_px), axis=-1)


# ----------------------------------------------------------------------------------------------
# Raw patch descriptors (baseline)
# ----------------------------------------------------------------------------------------------


def patch_descriptors(images: Array, patch_size: int = 9) -> Array:
  """Normalised grey patches around every pixel: the simplest dense descriptor.

  The luma (BT.601) patch of ``patch_size x patch_size`` pixels centred on each pixel (edge
  pixels replicated beyond the border), minus its mean, divided by its L2 norm
  (normalised cross-correlation as a dot product).

  Args:
    images: ``[B, H, W, C]`` float images (C = 1 or 3, any intensity scale).
    patch_size: odd patch side in pixels.

  Returns:
    ``[B, H, W, patch_size ** 2]`` float32, zero mean and unit L2 norm per pixel (zero for a
    flat patch); row-major patch layout.
  """
  if patch_size < 1 or patch_size % 2 == 0:
    raise ValueError(f"patch_size must be a positive odd number, got {patch_size}.")
  images = jnp.asarray(images, jnp.float32)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"patch_descriptors needs images [B, H, W, 1 or 3], got {images.shape}.")
  if images.shape[-1] == 3:
    grey = jnp.einsum("bhwc,c->bhw", images, jnp.asarray(_LUMA, jnp.float32))[..., None]
  else:
    grey = images
  radius = patch_size // 2
  padded = jnp.pad(grey, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
  patches = jax.lax.conv_general_dilated_patches(
      padded, (patch_size, patch_size), (1, 1), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
  patches = patches - jnp.mean(patches, axis=-1, keepdims=True)
  # A flat patch has rounding-level residuals; treat it as exactly zero.
  norm2 = jnp.sum(jnp.square(patches), axis=-1, keepdims=True)
  return jnp.where(norm2 > 1e-6, patches * jax.lax.rsqrt(jnp.maximum(norm2, 1e-12)), 0.0)


# ----------------------------------------------------------------------------------------------
# Statistics (NumPy)
# ----------------------------------------------------------------------------------------------


def yaw_difference_bin(yaw_difference_deg: np.ndarray) -> np.ndarray:
  """Index into :data:`YAW_DIFFERENCE_BINS_DEG` of each ``|yaw_a - yaw_b|`` (degrees, ``[...]``);
  -1 for NaN."""
  diff = np.abs(np.asarray(yaw_difference_deg, np.float64))
  index = np.full(diff.shape, -1, np.int64)
  for k, (_, low, high) in enumerate(YAW_DIFFERENCE_BINS_DEG):
    index[(diff >= low) & (diff < high)] = k
  return index


def summarise_matches(errors_px: np.ndarray, valid: np.ndarray, yaw_difference_deg: np.ndarray,
                      thresholds_px: Sequence[float] = PCK_THRESHOLDS_PX
                      ) -> Dict[str, Dict[str, float]]:
  """PCK and mean error of matches, by yaw-difference bin.

  Args:
    errors_px: ``[P, K]`` matching errors in pixels (P view pairs, K points each).
    valid: ``[P, K]`` bool, the correspondences that count (visible in both views).
    yaw_difference_deg: ``[P]`` ``|yaw_a - yaw_b|`` in degrees of each pair.
    thresholds_px: PCK thresholds in pixels.

  Returns:
    ``{bin name: {"pck@<t>px": fraction of errors <= t, ..., "mean_error_px": mean of the
    finite errors, "median_error_px": median of all (non-finite ones, e.g. no descriptor, count
    as infinite), "num_points": int, "num_failed": int (non-finite errors), "num_pairs": int}}``
    for the bins of
    :data:`YAW_DIFFERENCE_BINS_DEG` and :data:`AGGREGATE_BINS_DEG` (NaN figures for an empty
    bin). Python floats, ready for JSON.
  """
  errors = np.asarray(errors_px, np.float64)
  valid = np.asarray(valid, bool)
  diff = np.abs(np.asarray(yaw_difference_deg, np.float64)).reshape(-1)
  if errors.ndim != 2 or errors.shape != valid.shape or diff.shape[0] != errors.shape[0]:
    raise ValueError(f"summarise_matches needs errors [P, K], valid [P, K] and yaw differences "
                     f"[P]; got {errors.shape}, {valid.shape}, {diff.shape}.")
  errors = np.where(np.isfinite(errors), errors, np.inf)  # NaN counts as a failure.
  result = {}
  for name, low, high in YAW_DIFFERENCE_BINS_DEG + AGGREGATE_BINS_DEG:
    pairs = (diff >= low) & (diff < high)
    chosen = errors[pairs][valid[pairs]]
    entry = {}
    for t in thresholds_px:
      entry[f"pck@{t:g}px"] = float(np.mean(chosen <= t)) if chosen.size else float("nan")
    finite = chosen[np.isfinite(chosen)]
    entry["mean_error_px"] = float(np.mean(finite)) if finite.size else float("nan")
    entry["median_error_px"] = float(np.median(chosen)) if chosen.size else float("nan")
    entry["num_points"] = int(chosen.size)
    entry["num_failed"] = int(chosen.size - finite.size)
    entry["num_pairs"] = int(np.sum(pairs))
    result[name] = entry
  return result


def pck_curve(errors_px: np.ndarray, valid: np.ndarray, thresholds_px: np.ndarray) -> np.ndarray:
  """``[T]`` fraction of valid errors ``<= t`` for each threshold (NaN if nothing is valid)."""
  chosen = np.asarray(errors_px, np.float64)[np.asarray(valid, bool)]
  thresholds = np.asarray(thresholds_px, np.float64)
  if not chosen.size:
    return np.full(thresholds.shape, np.nan)
  return np.mean(chosen[:, None] <= thresholds[None, :], axis=0)


# ----------------------------------------------------------------------------------------------
# PCA visualisation (NumPy)
# ----------------------------------------------------------------------------------------------


def fit_pca(descriptors: np.ndarray, num_components: int = 3) -> Tuple[np.ndarray, np.ndarray]:
  """Principal axes of a set of descriptors.

  Args:
    descriptors: ``[N, D]`` float (e.g. the foreground pixels of one or several maps).
    num_components: number of axes kept (``<= D``; extra ones are zero if D is smaller).

  Returns:
    ``(mean [D] float64, components [num_components, D] float64)``: unit-norm axes by
    decreasing variance, each sign fixed so that its largest-magnitude entry is positive
    (the colours do not flip between runs).
  """
  x = np.asarray(descriptors, np.float64)
  if x.ndim != 2 or x.shape[0] < 1:
    raise ValueError(f"fit_pca needs descriptors [N >= 1, D], got {x.shape}.")
  mean = x.mean(axis=0)
  _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
  components = np.zeros((num_components, x.shape[1]))
  k = min(num_components, vt.shape[0])
  components[:k] = vt[:k]
  signs = np.sign(components[np.arange(num_components), np.argmax(np.abs(components), axis=1)])
  components *= np.where(signs == 0, 1.0, signs)[:, None]
  return mean, components


def project_pca(descriptor_map: np.ndarray, mean: np.ndarray, components: np.ndarray
                ) -> np.ndarray:
  """``[..., D]`` descriptors -> ``[..., C]`` coordinates on the ``[C, D]`` axes of :func:`fit_pca`."""
  return (np.asarray(descriptor_map, np.float64) - mean) @ np.asarray(components).T


def pca_rgb(descriptor_maps: Sequence[np.ndarray], masks: Optional[Sequence[np.ndarray]] = None,
            percentile: float = 1.0) -> list:
  """First three principal components of descriptor maps as RGB, one PCA basis for all maps.

  The PCA is fitted on the masked pixels of all maps together (all pixels where no mask is
  given, or where a mask is empty), so equal colours mean similar descriptors across maps. Each
  component is mapped linearly to [0, 1] between its ``percentile`` and ``100 - percentile``
  percentiles over those pixels, then clipped.

  Args:
    descriptor_maps: list of ``[H_n, W_n, D]`` float maps.
    masks: optional list of ``[H_n, W_n]`` bool: the pixels the PCA and the colour range are
      fitted on (e.g. the face region).
    percentile: robust range in percent (0 = min / max).

  Returns:
    list of ``[H_n, W_n, 3]`` float32 images in ``[0, 1]``.
  """
  maps = [np.asarray(m, np.float64) for m in descriptor_maps]
  if not maps or any(m.ndim != 3 for m in maps) or len({m.shape[-1] for m in maps}) != 1:
    raise ValueError("pca_rgb needs a non-empty list of [H, W, D] maps with the same D, got "
                     f"shapes {[m.shape for m in maps]}.")
  if masks is None:
    masks = [None] * len(maps)
  if len(masks) != len(maps):
    raise ValueError(f"pca_rgb got {len(maps)} maps but {len(masks)} masks.")
  chosen = []
  for m, mask in zip(maps, masks):
    flat = m.reshape(-1, m.shape[-1])
    if mask is not None:
      mask = np.asarray(mask, bool)
      if mask.shape != m.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from its map's {m.shape[:2]}.")
      if mask.any():
        flat = flat[mask.reshape(-1)]
    chosen.append(flat)
  fit_on = np.concatenate(chosen, axis=0)
  mean, components = fit_pca(fit_on, 3)
  projected = project_pca(fit_on, mean, components)
  low = np.percentile(projected, percentile, axis=0)
  high = np.percentile(projected, 100.0 - percentile, axis=0)
  span = np.where(high - low > 1e-12, high - low, 1.0)
  return [np.clip((project_pca(m, mean, components) - low) / span, 0.0, 1.0).astype(np.float32)
          for m in maps]


def to_uint8(image: np.ndarray) -> np.ndarray:
  """``[..., 3]`` float image in [0, 1] -> uint8 (rounded, clipped)."""
  return np.clip(np.asarray(image, np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
