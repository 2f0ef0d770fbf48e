"""Multi-view alignment: several images of one person share the identity coefficients.

The paper's first version (``paper.md``, "Alignment", last paragraph): ``V`` views of one face
each keep their own landmarks and pose, but the shape fit of every stage (step 4 of
:mod:`dff_jax.alignment.cascade`) stacks all views' weighted landmark equations and solves for
one identity vector ``alpha [Ki]`` shared by the views, with an expression vector ``beta_v [Ke]``
per view (or one shared ``beta [Ke]`` when ``share_expression``):

  min  sum_v sum_n w_vn || x_vn - proj_v(mean_n + A_n alpha + B_n beta_v) ||^2
       + lambda (||alpha||^2 + sum_v sum_j (beta_vj / sigma_j)^2)

(model millimetres after removing each view's scale and translation, exactly the per-view
objective of :func:`dff_jax.alignment.cascade.fit_shape_rows`; the identity prior is counted
once, the expression prior once per expression vector). With one view this is the single-view
fit. ``prior_per_view=True`` counts the shared prior once per real view instead (the sum of the
single-view objectives with the identity tied): more robust when the views' landmark errors are
correlated, as a cascade's are (see ``experiments/eval_multiview.py``). The per-expression blocks are eliminated (Schur complement), so the solve is one
``Ki``-square Cholesky plus ``V`` ``Ke``-square ones.

Each stage per view: features at the current landmarks and regression exactly as
:func:`dff_jax.alignment.cascade.apply_stage` (``vmap`` over views), then the joint fit, then each
view's landmarks are re-projected from the joint shape under its own pose.

Shapes are static: the views are a leading ``[V]`` axis of every state field; a ``view_mask
[V]`` (1 = real view, 0 = padding) lets sets of different sizes share one compiled function
(padded views get zero weight in the fit; their outputs are meaningless). Sets of views are
batched with ``vmap`` (:func:`align_multiview_crops`). Everything is pure JAX, jit-able and
differentiable. Frames: the crop frame of :mod:`dff_jax.alignment.cascade` per view.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp

from dff_jax import descriptor_fields
from dff_jax.alignment import cascade
from dff_jax.alignment import fitting
from dff_jax.face_model import jax_support  # noqa: F401  (FaceModel pytree)
from dff_jax.face_model import model as face_model_lib

Array = Any
AlignmentModel = cascade.AlignmentModel
AlignmentState = cascade.AlignmentState
CascadeConfig = cascade.CascadeConfig
CascadeParams = cascade.CascadeParams
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------
# The joint shape fit
# ----------------------------------------------------------------------------------------------


def view_equations(mean: Array, basis: Array, landmarks_px: Array, pose: Array,
                   rotation: Array) -> Tuple[Array, Array]:
  """One view's linear landmark equations ``jacobian @ c ~= target`` (model mm).

  The same construction as :func:`dff_jax.alignment.cascade.fit_shape_rows`.

  Args:
    mean: ``[N, 3]`` mean-shape landmark vertices (model mm).
    basis: ``[N, 3, Ki + Ke]`` their identity then expression basis rows.
    landmarks_px: ``[N, 2]`` target crop pixels.
    pose: ``[6]`` pose (scale and translation are read); rotation: ``[3, 3]`` its rotation.

  Returns:
    ``(jacobian [N, 2, Ki + Ke], target [N, 2])`` float32: image directions at unit scale.
  """
  flip = jnp.array([1.0, -1.0], jnp.float32)
  projection = rotation[:2] * flip[:, None]  # [2, 3]
  target = ((landmarks_px - pose[4:6]) / pose[0]
            - jnp.sum(mean[:, None, :] * projection[None], axis=-1))
  jacobian = jnp.sum(projection[None, :, :, None] * basis[:, None, :, :], axis=2)
  return jacobian, target


def _normal_blocks(jacobian: Array, target: Array, weights: Array) -> Tuple[Array, Array]:
  """``(J^T W J [K, K], J^T W t [K])`` of one view's equations (``weights [N]``)."""
  num_points, _, num_coefficients = jacobian.shape
  jacobian = jacobian.reshape(2 * num_points, num_coefficients)
  weighted = jacobian * jnp.repeat(weights, 2)[:, None]
  return (jnp.dot(weighted.T, jacobian, precision=_HIGHEST),
          jnp.dot(weighted.T, target.reshape(-1), precision=_HIGHEST))


def _solve_spd(matrix: Array, rhs: Array) -> Array:
  return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(matrix), rhs)


def fit_joint_shape_rows(alignment_model: AlignmentModel, mean: Array, basis: Array,
                         landmarks_px: Array, pose: Array, rotation: Array, weights: Array,
                         regularisation: float, share_expression: bool = False,
                         prior_per_view: bool = False) -> Tuple[Array, Array]:
  """The joint shape fit of ``V`` views on pre-gathered landmark rows.

  Args:
    alignment_model: model (for the prior).
    mean: ``[V, N, 3]``; basis: ``[V, N, 3, Ki + Ke]`` landmark rows per view
      (:func:`dff_jax.alignment.cascade.landmark_rows` of each view's pose-dependent ids).
    landmarks_px: ``[V, N, 2]`` target crop pixels per view.
    pose: ``[V, 6]`` per-view poses; rotation: ``[V, 3, 3]`` their rotations.
    weights: ``[V, N]`` non-negative landmark weights (zero rows for padded views).
    regularisation: lambda (mm^2), as :class:`dff_jax.alignment.cascade.CascadeConfig`.
    share_expression: one expression vector for all views instead of one per view.
    prior_per_view: count the shared coefficients' prior once per real view (a view with any
      positive weight) instead of once: the objective is then the sum of the single-view
      objectives with the identity tied, as strongly regularised per view as a single-view
      fit. Landmark errors that are correlated across views (a cascade's bias) do not average
      out, and the default MAP weighting lets them through ``V`` times more strongly.

  Returns:
    ``(identity [Ki], expression [V, Ke])`` float32 (with ``share_expression`` every row of
    ``expression`` is the same vector).
  """
  model = alignment_model.face_model
  num_identity = model.num_identity
  num_views = mean.shape[0]
  prior = regularisation * fitting._prior_precision(model)  # pylint: disable=protected-access
  shared_prior = prior
  if prior_per_view:
    real_views = jnp.sum((jnp.max(weights, axis=1) > 0).astype(jnp.float32))
    shared_prior = prior * jnp.maximum(real_views, 1.0)
  jacobian, target = jax.vmap(view_equations)(mean, basis, landmarks_px, pose, rotation)
  normal, rhs = jax.vmap(_normal_blocks)(jacobian, target, weights)  # [V, K, K], [V, K]
  if share_expression:
    coefficients = _solve_spd(jnp.sum(normal, axis=0) + jnp.diag(shared_prior),
                              jnp.sum(rhs, axis=0))
    expression = jnp.broadcast_to(coefficients[num_identity:],
                                  (num_views, coefficients.shape[0] - num_identity))
    return coefficients[:num_identity], expression
  # Schur complement: eliminate each view's expression block.
  n_aa = normal[:, :num_identity, :num_identity]
  n_ab = normal[:, :num_identity, num_identity:]
  n_bb = normal[:, num_identity:, num_identity:] + jnp.diag(prior[num_identity:])[None]
  r_a, r_b = rhs[:, :num_identity], rhs[:, num_identity:]
  # M_v^{-1} [N_ba | r_b] per view, one factorisation each.
  stacked = jnp.concatenate([jnp.swapaxes(n_ab, 1, 2), r_b[:, :, None]], axis=2)
  solved = jax.vmap(_solve_spd)(n_bb, stacked)  # [V, Ke, Ki + 1]
  reduced = (jnp.sum(n_aa, axis=0) + jnp.diag(shared_prior[:num_identity])
             - jnp.einsum("vab,vbc->ac", n_ab, solved[:, :, :num_identity], precision=_HIGHEST))
  reduced = 0.5 * (reduced + reduced.T)
  reduced_rhs = (jnp.sum(r_a, axis=0)
                 - jnp.einsum("vab,vb->a", n_ab, solved[:, :, num_identity], precision=_HIGHEST))
  identity = _solve_spd(reduced, reduced_rhs)
  expression = (solved[:, :, num_identity]
                - jnp.einsum("vba,a->vb", solved[:, :, :num_identity], identity,
                             precision=_HIGHEST))
  return identity, expression


def joint_refit(alignment_model: AlignmentModel, landmarks_px: Array, pose: Array,
                weights: Array, config: CascadeConfig, share_expression: bool = False,
                prior_per_view: bool = False) -> AlignmentState:
  """Steps 4-5 for ``V`` views of one face: the joint shape fit, then per-view re-projection.

  Args:
    alignment_model: model and normals.
    landmarks_px: ``[V, 68, 2]`` target crop pixels per view.
    pose: ``[V, 6]`` per-view poses (crop frame).
    weights: ``[V, 68]`` landmark weights (e.g. visibility times the view mask).
    config: ``shape_regularisation`` and ``visibility_threshold`` are read.
    share_expression, prior_per_view: see :func:`fit_joint_shape_rows`.

  Returns:
    :class:`dff_jax.alignment.cascade.AlignmentState` with a leading ``[V]`` axis; every view
    carries the same ``shape_coefficients``.
  """
  model = alignment_model.face_model
  rotation = cascade.pose_rotation(pose)  # [V, 3, 3]
  vertex_ids = jax.vmap(lambda r: face_model_lib.landmark_vertex_ids_for_pose(model, r))(rotation)
  mean, basis = jax.vmap(lambda ids: cascade.landmark_rows(alignment_model, ids))(vertex_ids)
  identity, expression = fit_joint_shape_rows(
      alignment_model, mean, basis, landmarks_px, pose, rotation, weights,
      config.shape_regularisation, share_expression, prior_per_view)
  num_views = pose.shape[0]
  identity = jnp.broadcast_to(identity, (num_views, identity.shape[0]))
  coefficients = jnp.concatenate([identity, expression], axis=1)

  def project(p, r, ids, m, b, c):
    return cascade._project_rows(  # pylint: disable=protected-access
        alignment_model, p, r, ids, m, b, c, config.visibility_threshold)

  landmarks, visibility = jax.vmap(project)(pose, rotation, vertex_ids, mean, basis, coefficients)
  return AlignmentState(landmarks_px=landmarks, visibility=visibility, pose=pose,
                        shape_coefficients=identity, expression_coefficients=expression)


# ----------------------------------------------------------------------------------------------
# The cascade over views
# ----------------------------------------------------------------------------------------------


def apply_joint_stage(alignment_model: AlignmentModel, stage: Tuple[Array, ...],
                      states: AlignmentState, descriptor_maps: Array, view_mask: Array,
                      config: CascadeConfig, share_expression: bool = False,
                      prior_per_view: bool = False) -> Tuple[AlignmentState, Array]:
  """One cascade stage for ``V`` views of one face.

  Args:
    alignment_model: model and normals.
    stage: one stage's arrays (:meth:`dff_jax.alignment.cascade.CascadeParams.stages`, read
      by :func:`dff_jax.alignment.cascade.regress`).
    states: current estimates, leading ``[V]``.
    descriptor_maps: ``[V, crop, crop, D]``.
    view_mask: ``[V]`` float32 1 for real views, 0 for padding.
    config, share_expression, prior_per_view: as :func:`joint_refit`.

  Returns:
    ``(next_states [V], regressed_landmarks_px [V, 68, 2])``.
  """
  features = descriptor_fields.vmap_faces(cascade.stage_features)(
      descriptor_maps, states.landmarks_px, states.visibility)
  landmarks, pose = jax.vmap(lambda s, f: cascade.regress(stage, s, f))(states, features)
  weights = states.visibility * view_mask[:, None]
  return joint_refit(alignment_model, landmarks, pose, weights, config, share_expression,
                     prior_per_view), landmarks


def initial_states(alignment_model: AlignmentModel, params: CascadeParams,
                   config: CascadeConfig, num_views: int) -> AlignmentState:
  """:func:`dff_jax.alignment.cascade.initial_state` repeated over ``num_views`` views."""
  state = cascade.initial_state(alignment_model, params, config)
  return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (num_views,) + x.shape), state)


def run_multiview_cascade(alignment_model: AlignmentModel, params: CascadeParams,
                          descriptor_maps: Array, config: CascadeConfig,
                          share_expression: bool = False, view_mask: Optional[Array] = None,
                          states: Optional[AlignmentState] = None, remat: bool = False,
                          prior_per_view: bool = False) -> Tuple[AlignmentState, AlignmentState]:
  """All K stages for ``V`` views of one face as a ``lax.scan``.

  Args:
    alignment_model: model and normals.
    params: stacked stage regressors (the single-view cascade's).
    descriptor_maps: ``[V, crop, crop, D]`` descriptors of the views' face crops.
    config: static settings.
    share_expression: one expression for all views (static).
    view_mask: optional ``[V]`` 1 = real view, 0 = padding (default all ones).
    states: starting estimates ``[V]`` (default :func:`initial_states`).
    remat: rematerialise each stage in the backward pass.
    prior_per_view: see :func:`fit_joint_shape_rows` (static).

  Returns:
    ``(final_states, per_stage_states)``: leading ``[V]``, resp. ``[K, V]``, on every field.
  """
  num_views = descriptor_fields.num_faces(descriptor_maps)
  if view_mask is None:
    view_mask = jnp.ones((num_views,), jnp.float32)
  view_mask = jnp.asarray(view_mask, jnp.float32)
  if states is None:
    states = initial_states(alignment_model, params, config, num_views)

  def body(carry, stage):
    new_states, _ = apply_joint_stage(alignment_model, stage, carry, descriptor_maps, view_mask,
                                      config, share_expression, prior_per_view)
    return new_states, new_states

  if remat:
    body = jax.checkpoint(body)
  return jax.lax.scan(body, states, params.stages())


def align_multiview_crops(alignment_model: AlignmentModel, params: CascadeParams,
                          descriptor_maps: Array, config: CascadeConfig,
                          share_expression: bool = False, view_mask: Optional[Array] = None,
                          remat: bool = False, prior_per_view: bool = False) -> AlignmentState:
  """:func:`run_multiview_cascade` over a batch of sets: ``descriptor_maps [B, V, crop, crop,
  D]``, optional ``view_mask [B, V]``; returns final states with leading ``[B, V]``."""
  if view_mask is None:
    view_mask = jnp.ones(descriptor_fields.leading_shape(descriptor_maps, 2), jnp.float32)

  def one(maps, mask):
    return run_multiview_cascade(alignment_model, params, maps, config, share_expression, mask,
                                 remat=remat, prior_per_view=prior_per_view)[0]
  return descriptor_fields.vmap_faces(one)(descriptor_maps, jnp.asarray(view_mask, jnp.float32))


def align_multiview_images(describe: Callable[[Array], Array], alignment_model: AlignmentModel,
                           params: CascadeParams, images: Array, boxes_xyxy: Array,
                           config: CascadeConfig, share_expression: bool = False,
                           view_mask: Optional[Array] = None,
                           prior_per_view: bool = False) -> cascade.AlignmentResult:
  """Images of one person in, per-view landmarks / pose and the shared shape out (image pixels).

  Jit this (``config``, ``describe`` and ``share_expression`` static).

  Args:
    describe: crops ``[V, crop, crop, 3]`` float32 in [0, 255] -> ``[V, crop, crop, D]``.
    alignment_model: model and normals.
    params: cascade regressors.
    images: ``[V, H, W, 3]`` float32 or uint8 (padded to one size).
    boxes_xyxy: ``[V, 4]`` face boxes, image pixels.
    config: static settings.
    share_expression, prior_per_view: see :func:`fit_joint_shape_rows`.
    view_mask: optional ``[V]`` (padding).

  Returns:
    :class:`dff_jax.alignment.cascade.AlignmentResult` with a leading ``[V]`` axis.
  """
  crops, crop_boxes = cascade.crop_faces(images, boxes_xyxy, config)
  states, _ = run_multiview_cascade(alignment_model, params, describe(crops), config,
                                    share_expression, view_mask, prior_per_view=prior_per_view)
  return cascade.state_to_image(states, crop_boxes, config.crop_size, alignment_model)
