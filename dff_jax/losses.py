"""Correspondence losses for the DFF descriptor network: pure functions -> ``(loss, metrics)``.

* :func:`patch_classification_loss` -- the paper's loss (the recipe of Wei et al., "Dense Human
  Body Correspondences Using Convolutional Networks", CVPR 2016): the face mesh is cut into ``P``
  patches in each of ``S`` random segmentations; every face pixel is classified into the patch it
  shows by one 1x1 classifier ``D -> P`` per segmentation on top of the shared descriptor. Each
  step trains a random subset of ``G`` segmentations (:func:`sample_segmentation_ids`).
* :func:`info_nce_loss` -- a pairwise alternative (not known to be the paper's): InfoNCE over the
  ``K`` ground-truth correspondences of two views, the other ``K - 1`` points of the other view
  being the negatives, symmetric a->b and b->a.
* :func:`combined_loss` -- a weighted sum of the two, chosen by a config
  (:func:`default_loss_config`).

Descriptors are ``[B, H, W, D]`` NHWC with unit L2 norm over ``D`` (see :mod:`dff_jax.encoder`);
all loss arithmetic is float32 whatever the descriptor dtype. Image points are ``(x, y)`` pixels,
x right, y down, pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from dff_jax.encoder import l2_normalize
from dff_jax import descriptor_fields

Array = Any
Metrics = Dict[str, Array]

# A finite "minus infinity" for masked logits: keeps logsumexp and its gradient NaN-free even for
# fully masked rows (which are then weighted by zero).
_MASKED_LOGIT = -1e9


# ----------------------------------------------------------------------------------------------
# Patch classification (the paper's loss)
# ----------------------------------------------------------------------------------------------


def init_patch_classifiers(key: Array, num_segmentations: int, descriptor_dim: int,
                           num_patches: int, stddev: Optional[float] = None) -> Dict[str, Array]:
  """Parameters of ``num_segmentations`` 1x1 classifiers ``D -> P``.

  Args:
    key: PRNG key.
    num_segmentations: ``S``.
    descriptor_dim: ``D``.
    num_patches: ``P``.
    stddev: weight init standard deviation; default ``1 / sqrt(D)`` (LeCun normal).

  Returns:
    ``{"weight": [S, D, P] float32, "bias": [S, P] float32 (zeros)}``.
  """
  if min(num_segmentations, descriptor_dim, num_patches) < 1:
    raise ValueError("init_patch_classifiers needs positive sizes, got S="
                     f"{num_segmentations}, D={descriptor_dim}, P={num_patches}.")
  stddev = descriptor_dim ** -0.5 if stddev is None else stddev
  weight = stddev * jax.random.normal(
      key, (num_segmentations, descriptor_dim, num_patches), jnp.float32)
  return {"weight": weight, "bias": jnp.zeros((num_segmentations, num_patches), jnp.float32)}


def sample_segmentation_ids(key: Array, num_segmentations: int, num_selected: int) -> Array:
  """``G = num_selected`` distinct segmentation ids drawn uniformly from ``[0, S)``.

  Returns:
    ``[G]`` int32.
  """
  if not 1 <= num_selected <= num_segmentations:
    raise ValueError(f"sample_segmentation_ids: need 1 <= G <= S, got G={num_selected}, "
                     f"S={num_segmentations}.")
  return jax.random.permutation(key, num_segmentations)[:num_selected].astype(jnp.int32)


def sample_valid_pixels(key: Array, valid: Array, num_pixels: int) -> Tuple[Array, Array]:
  """Picks ``N = num_pixels`` pixels per image uniformly without replacement among valid ones.

  Static shapes: when an image has fewer than ``N`` valid pixels, all of them are taken and the
  remaining slots hold invalid pixels, reported as ``False`` in the returned mask.

  Args:
    key: PRNG key.
    valid: ``[B, H * W]`` bool.
    num_pixels: ``N <= H * W``.

  Returns:
    ``(indices [B, N] int32 flat pixel indices, mask [B, N] bool)``.
  """
  if not 1 <= num_pixels <= valid.shape[-1]:
    raise ValueError(f"sample_valid_pixels: num_pixels must be in [1, H*W={valid.shape[-1]}], "
                     f"got {num_pixels}.")
  # Valid pixels score in [1, 2), invalid in [0, 1): top-N takes valid ones first, at random.
  scores = jax.random.uniform(key, valid.shape) + valid.astype(jnp.float32)
  _, indices = jax.lax.top_k(scores, num_pixels)
  mask = jnp.take_along_axis(valid, indices, axis=-1)
  return indices.astype(jnp.int32), mask


def patch_classification_loss(descriptors: Array, vertex_ids: Array, patch_table: Array,
                              classifier_params: Mapping[str, Array], segmentation_ids: Array,
                              *, logit_scale: float = 1.0,
                              num_pixels_per_image: Optional[int] = None,
                              key: Optional[Array] = None) -> Tuple[Array, Metrics]:
  """Multi-segmentation per-pixel patch classification (softmax cross-entropy).

  For each selected segmentation ``g = segmentation_ids[j]`` and valid pixel with vertex ``v``,
  the label is ``patch_table[g, v]`` and the logits are
  ``logit_scale * descriptor @ weight[g] + bias[g]``. The loss is the cross-entropy averaged over
  valid pixels and the ``G`` selected segmentations. Only the ``G`` selected heads are gathered;
  the largest intermediate is the ``[G, B, N, P]`` float32 logits, ``N = H * W`` or
  ``num_pixels_per_image``.

  Args:
    descriptors: ``[B, H, W, D]`` descriptors (any float dtype; math in float32), or a batched
      :class:`dff_jax.descriptor_fields.PointField` (then only the classified pixels' centres
      are queried).
    vertex_ids: ``[B, H, W]`` int32 nearest mesh vertex per pixel; ``-1`` = background / ignore.
    patch_table: ``[S, V]`` int32 patch id in ``[0, P)`` of every vertex in each segmentation
      (``-1`` = vertex in no patch, ignored). See ``dff_jax.face_model.segmentation``.
    classifier_params: ``{"weight": [S, D, P], "bias": [S, P]}``
      (:func:`init_patch_classifiers`).
    segmentation_ids: ``[G]`` int32 segmentations trained this step
      (:func:`sample_segmentation_ids`).
    logit_scale: fixed multiplier of ``descriptor @ weight`` (descriptors are unit norm, so a
      scale > 1, e.g. 10, lets the logits reach a confident range sooner; 1 = plain classifier).
    num_pixels_per_image: if given (static int), classify only this many valid pixels per image,
      chosen at random with ``key`` (:func:`sample_valid_pixels`): the cost and memory fall by
      ``H * W / N``, the gradient stays unbiased up to the per-image reweighting. ``None`` (or
      ``N >= H * W``) = all pixels.
    key: PRNG key, required with ``num_pixels_per_image``.

  Returns:
    ``(loss, metrics)``: scalar float32 loss; metrics ``loss``, ``accuracy`` (top-1 patch accuracy
    over the classified valid pixels and the ``G`` segmentations), ``valid_fraction`` (fraction of
    all ``B * H * W`` pixels with a label), ``num_classified`` (labelled pixels classified).
  """
  is_point_field = isinstance(descriptors, descriptor_fields.PointField)
  if is_point_field:
    batch = descriptor_fields.num_faces(descriptors)
    (height, width), dim = descriptors.image_shape, descriptors.descriptor_dim
  else:
    if descriptors.ndim != 4:
      raise ValueError(f"descriptors must be [B, H, W, D], got shape {descriptors.shape}.")
    batch, height, width, dim = descriptors.shape
  if vertex_ids.shape != (batch, height, width):
    raise ValueError(f"vertex_ids must be [B, H, W] = {(batch, height, width)}, got "
                     f"{vertex_ids.shape}.")
  weight, bias = classifier_params["weight"], classifier_params["bias"]
  num_segmentations = patch_table.shape[0]
  if weight.ndim != 3 or weight.shape[:2] != (num_segmentations, dim):
    raise ValueError(f"classifier weight must be [S={num_segmentations}, D={dim}, P], got "
                     f"{weight.shape}.")
  if bias.shape != (num_segmentations, weight.shape[2]):
    raise ValueError(f"classifier bias must be [S, P] = {(num_segmentations, weight.shape[2])}, "
                     f"got {bias.shape}.")
  if segmentation_ids.ndim != 1:
    raise ValueError(f"segmentation_ids must be [G], got shape {segmentation_ids.shape}.")

  flat_vertices = vertex_ids.reshape(batch, height * width)
  has_vertex = flat_vertices >= 0
  subsample = num_pixels_per_image is not None and int(num_pixels_per_image) < height * width
  if subsample and key is None:
    raise ValueError("patch_classification_loss: num_pixels_per_image needs a PRNG key.")
  if is_point_field:
    # Only the classified pixels are described: query the field at their centres.
    if subsample:
      indices, _ = sample_valid_pixels(key, has_vertex, int(num_pixels_per_image))
    else:
      indices = jnp.broadcast_to(jnp.arange(height * width, dtype=jnp.int32), has_vertex.shape)
    centres = jnp.stack([(indices % width).astype(jnp.float32) + 0.5,
                         (indices // width).astype(jnp.float32) + 0.5], axis=-1)
    flat_descriptors, _ = descriptor_fields.query_batch(descriptors, centres)
    flat_vertices = jnp.take_along_axis(flat_vertices, indices, axis=1)
  else:
    flat_descriptors = descriptors.reshape(batch, height * width, dim).astype(jnp.float32)
    if subsample:
      indices, _ = sample_valid_pixels(key, has_vertex, int(num_pixels_per_image))
      flat_descriptors = jnp.take_along_axis(flat_descriptors, indices[..., None], axis=1)
      flat_vertices = jnp.take_along_axis(flat_vertices, indices, axis=1)

  tables = patch_table[segmentation_ids]  # [G, V]
  labels = jnp.take(tables, jnp.maximum(flat_vertices, 0), axis=1)  # [G, B, N]
  mask = (flat_vertices >= 0)[None] & (labels >= 0)  # [G, B, N]
  heads_w = weight[segmentation_ids].astype(jnp.float32)  # [G, D, P]
  heads_b = bias[segmentation_ids].astype(jnp.float32)  # [G, P]
  logits = logit_scale * jnp.einsum("bnd,gdp->gbnp", flat_descriptors, heads_w)
  logits = logits + heads_b[:, None, None, :]
  safe_labels = jnp.maximum(labels, 0)
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, safe_labels)
  maskf = mask.astype(jnp.float32)
  count = jnp.sum(maskf)
  denominator = jnp.maximum(count, 1.0)
  loss = jnp.sum(jnp.where(mask, cross_entropy, 0.0)) / denominator
  correct = (jnp.argmax(logits, axis=-1) == labels) & mask
  metrics = {
      "loss": loss,
      "accuracy": jnp.sum(correct.astype(jnp.float32)) / denominator,
      "valid_fraction": jnp.mean((vertex_ids >= 0).astype(jnp.float32)),
      "num_classified": count / segmentation_ids.shape[0],
  }
  return loss, metrics


# ----------------------------------------------------------------------------------------------
# Pairwise InfoNCE
# ----------------------------------------------------------------------------------------------


def _sample_points(field: Any, points_px: Array) -> Tuple[Array, Array]:
  """One face's field (a map [H, W, D] or a PointField), [K, 2] -> unit descriptors [K, D]
  float32, inside [K]."""
  values, inside = descriptor_fields.query(field, points_px)
  return l2_normalize(values, axis=-1), inside


def info_nce_loss(desc_a: Array, desc_b: Array, points_a_px: Array, points_b_px: Array,
                  valid: Array, temperature: float = 0.07) -> Tuple[Array, Metrics]:
  """Symmetric InfoNCE over the ``K`` correspondences of each image pair.

  Descriptors are read at the points with :func:`dff_jax.descriptor_fields.query` (dense maps:
  bilinear sampling) and re-normalised (bilinear mixing shortens unit vectors). For pair ``b`` the similarity matrix is
  ``L[k, l] = <f_a[k], f_b[l]> / temperature``; the loss of ``k`` in direction a->b is the
  cross-entropy of row ``k`` with target ``k`` (negatives: the other valid points of image b),
  and likewise for b->a with the columns. Points that are not ``valid`` or fall outside either
  image are neither anchors nor negatives.

  Args:
    desc_a, desc_b: ``[B, H, W, D]`` unit descriptors of views a and b, or batched
      :class:`dff_jax.descriptor_fields.PointField` s.
    points_a_px, points_b_px: ``[B, K, 2]`` float ``(x, y)`` pixel positions of the same surface
      points in views a and b (x right, y down, pixel (i, j) centred at (j + 0.5, i + 0.5)).
    valid: ``[B, K]`` bool, the point is visible in both views.
    temperature: softmax temperature (> 0).

  Returns:
    ``(loss, metrics)``: scalar float32 loss, the mean over valid points and both directions;
    metrics ``loss``, ``accuracy`` (top-1 matching accuracy among the ``K`` points, both
    directions), ``positive_similarity`` (mean cosine of corresponding descriptors),
    ``valid_fraction`` (of the ``B * K`` points).
  """
  if isinstance(desc_a, descriptor_fields.PointField):
    batch = descriptor_fields.num_faces(desc_a)
  elif desc_a.ndim != 4 or desc_a.shape != desc_b.shape:
    raise ValueError(f"desc_a and desc_b must both be [B, H, W, D], got {desc_a.shape} and "
                     f"{desc_b.shape}.")
  else:
    batch = desc_a.shape[0]
  if points_a_px.shape != points_b_px.shape or points_a_px.shape[::2] != (batch, 2):
    raise ValueError(f"points_a_px and points_b_px must both be [B={batch}, K, 2], got "
                     f"{points_a_px.shape} and {points_b_px.shape}.")
  if valid.shape != points_a_px.shape[:2]:
    raise ValueError(f"valid must be [B, K] = {points_a_px.shape[:2]}, got {valid.shape}.")
  if not temperature > 0:
    raise ValueError(f"info_nce_loss: temperature must be > 0, got {temperature}.")

  features_a, inside_a = jax.vmap(_sample_points)(desc_a, points_a_px.astype(jnp.float32))
  features_b, inside_b = jax.vmap(_sample_points)(desc_b, points_b_px.astype(jnp.float32))
  mask = valid.astype(bool) & inside_a & inside_b  # [B, K]
  similarity = jnp.einsum("bkd,bld->bkl", features_a, features_b)  # [B, K, K]
  logits = similarity / temperature
  num_points = logits.shape[-1]
  targets = jnp.broadcast_to(jnp.arange(num_points), mask.shape)

  def direction(logits_: Array) -> Tuple[Array, Array]:
    # Rows are anchors; masked points cannot be negatives (columns) either.
    masked = jnp.where(mask[:, None, :], logits_, _MASKED_LOGIT)
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(masked, targets)
    correct = jnp.argmax(masked, axis=-1) == targets
    return cross_entropy, correct

  ce_ab, correct_ab = direction(logits)
  ce_ba, correct_ba = direction(jnp.swapaxes(logits, 1, 2))
  count = jnp.sum(mask.astype(jnp.float32))
  denominator = 2.0 * jnp.maximum(count, 1.0)
  loss = (jnp.sum(jnp.where(mask, ce_ab, 0.0)) + jnp.sum(jnp.where(mask, ce_ba, 0.0))) / denominator
  accuracy = (jnp.sum((correct_ab & mask).astype(jnp.float32))
              + jnp.sum((correct_ba & mask).astype(jnp.float32))) / denominator
  positive = jnp.diagonal(similarity, axis1=1, axis2=2)
  metrics = {
      "loss": loss,
      "accuracy": accuracy,
      "positive_similarity": jnp.sum(jnp.where(mask, positive, 0.0)) / jnp.maximum(count, 1.0),
      "valid_fraction": jnp.mean(mask.astype(jnp.float32)),
  }
  return loss, metrics


# ----------------------------------------------------------------------------------------------
# Weighted combination
# ----------------------------------------------------------------------------------------------


def default_loss_config() -> ml_collections.ConfigDict:
  """Loss fields read by :func:`combined_loss` (a ``config.loss`` sub-config).

  * ``patch_weight``: weight of :func:`patch_classification_loss` (0 = not computed).
  * ``info_nce_weight``: weight of :func:`info_nce_loss` (0 = not computed).
  * ``temperature``: InfoNCE temperature.
  * ``logit_scale``: patch classifier logit scale.
  * ``num_pixels_per_image``: patch loss pixel subsampling (0 or ``None`` = all pixels).
  * ``num_segmentations_per_step``: ``G`` (used by the caller with
    :func:`sample_segmentation_ids`).
  """
  return ml_collections.ConfigDict(dict(
      patch_weight=1.0, info_nce_weight=0.0, temperature=0.07, logit_scale=10.0,
      num_pixels_per_image=2048, num_segmentations_per_step=4))


def _get(config: Any, name: str, default: Any) -> Any:
  if isinstance(config, Mapping):
    return config.get(name, default)
  return getattr(config, name, default)


def combined_loss(loss_config: Any, desc_a: Array, desc_b: Optional[Array],
                  batch: Mapping[str, Array], *, patch_table: Optional[Array] = None,
                  classifier_params: Optional[Mapping[str, Array]] = None,
                  segmentation_ids: Optional[Array] = None,
                  key: Optional[Array] = None) -> Tuple[Array, Metrics]:
  """``patch_weight * patch loss + info_nce_weight * InfoNCE``, terms with weight 0 skipped.

  The patch loss is applied to both views (``desc_a`` with ``batch["vertex_ids"][:, 0]`` and
  ``desc_b`` with ``[:, 1]``, as one batch); InfoNCE to the pair.

  Args:
    loss_config: mapping / ConfigDict with the fields of :func:`default_loss_config`.
    desc_a: ``[B, H, W, D]`` descriptors of view 0.
    desc_b: ``[B, H, W, D]`` descriptors of view 1, or ``None`` (patch loss on view 0 only).
    batch: batched pipeline sample; uses ``vertex_ids`` ``[B, V, H, W]`` int32 (patch loss) and
      ``points_a_px``, ``points_b_px`` ``[B, K, 2]`` float32, ``valid`` ``[B, K]`` bool (InfoNCE).
    patch_table, classifier_params, segmentation_ids: see :func:`patch_classification_loss`
      (required when ``patch_weight > 0``).
    key: PRNG key for pixel subsampling (required when ``num_pixels_per_image`` is set).

  Returns:
    ``(loss, metrics)``: metrics ``loss`` plus each computed term's metrics prefixed
    ``patch/`` or ``info_nce/``.
  """
  patch_weight = float(_get(loss_config, "patch_weight", 1.0) or 0.0)
  info_nce_weight = float(_get(loss_config, "info_nce_weight", 0.0) or 0.0)
  if patch_weight <= 0 and info_nce_weight <= 0:
    raise ValueError("combined_loss: set patch_weight and/or info_nce_weight > 0.")
  total = jnp.zeros((), jnp.float32)
  metrics: Metrics = {}
  if patch_weight > 0:
    if patch_table is None or classifier_params is None or segmentation_ids is None:
      raise ValueError("combined_loss: patch_weight > 0 needs patch_table, classifier_params and "
                       "segmentation_ids.")
    vertex_ids = batch["vertex_ids"]
    if desc_b is None:
      descriptors, vertices = desc_a, vertex_ids[:, 0]
    else:
      descriptors = descriptor_fields.concatenate([desc_a, desc_b], axis=0)
      vertices = jnp.concatenate([vertex_ids[:, 0], vertex_ids[:, 1]], axis=0)
    num_pixels = _get(loss_config, "num_pixels_per_image", None) or None
    loss, patch_metrics = patch_classification_loss(
        descriptors, vertices, patch_table, classifier_params, segmentation_ids,
        logit_scale=float(_get(loss_config, "logit_scale", 1.0)),
        num_pixels_per_image=num_pixels, key=key)
    total = total + patch_weight * loss
    metrics.update({f"patch/{k}": v for k, v in patch_metrics.items()})
  if info_nce_weight > 0:
    if desc_b is None:
      raise ValueError("combined_loss: info_nce_weight > 0 needs desc_b (the second view).")
    loss, nce_metrics = info_nce_loss(
        desc_a, desc_b, batch["points_a_px"], batch["points_b_px"], batch["valid"],
        temperature=float(_get(loss_config, "temperature", 0.07)))
    total = total + info_nce_weight * loss
    metrics.update({f"info_nce/{k}": v for k, v in nce_metrics.items()})
  metrics["loss"] = total
  return total, metrics
