"""Learning the cascade's regressors stage by stage by ridge regression (SDM, as in the paper).

For stage k: apply stages ``0..k-1`` (already learned) to every training face, compute the stage
features ``f`` (:func:`dff_jax.alignment.cascade.stage_features`) and the remaining residuals
(true landmarks minus the current ones; true pose minus the current one), then solve

    W_k = argmin ||F W - Y_landmarks||^2 + lambda_landmarks ||W||^2
    V_k = argmin ||F V - Y_pose / sigma_k||^2 + lambda_pose ||V||^2

with ``sigma_k`` the standard deviation of stage k's pose residuals (paper values: lambda 20 and
10). The sufficient statistics ``F^T F``, ``F^T Y``, ``sum Y`` and ``sum Y^2`` are accumulated over
batches (float64 on the host), so the training set never has to fit in memory: descriptor maps are
recomputed per stage from a batch function instead of stored.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dff_jax.alignment import cascade

Array = Any
# A batch: (descriptor_maps [B, crop, crop, D], true_landmarks_px [B, 68, 2] crop frame,
#           true_pose [B, 6] crop frame, weight [B] (0 for padding)).
Batch = Tuple[Array, Array, Array, Array]


def ridge_solve(gram: np.ndarray, cross: np.ndarray, regularisation: float) -> np.ndarray:
  """Solves ``(G + lambda I) W = C`` by Cholesky (float64, host).

  Args:
    gram: ``[F, F]`` ``F^T F``.
    cross: ``[F, T]`` ``F^T Y``.
    regularisation: ``lambda`` > 0.

  Returns:
    ``[F, T]`` float32 weights.
  """
  system = gram + regularisation * np.eye(gram.shape[0])
  factor = np.linalg.cholesky(system)
  solution = np.linalg.solve(factor.T, np.linalg.solve(factor, cross))
  return solution.astype(np.float32)


def truncate(params: cascade.CascadeParams, num_stages: int) -> cascade.CascadeParams:
  """The first ``num_stages`` stages of ``params`` (``num_stages`` may be 0)."""
  return params.replace(landmark_weights=params.landmark_weights[:num_stages],
                        pose_weights=params.pose_weights[:num_stages],
                        pose_std=params.pose_std[:num_stages])


def _stage_inputs(alignment_model, params, config, descriptor_maps, true_landmarks, true_pose):
  """Features and residuals of the next stage for a batch (jitted per number of stages)."""
  def one(descriptor_map, landmarks, pose):
    state = cascade.initial_state(alignment_model, params, config)
    if params.num_stages:
      state, _ = cascade.run_cascade(alignment_model, params, descriptor_map, config, state)
    features = cascade.stage_features(descriptor_map, state.landmarks_px, state.visibility)
    landmark_residual = (landmarks - state.landmarks_px).reshape(-1)
    pose_residual = pose - state.pose
    return features, landmark_residual, pose_residual, state.landmarks_px
  return jax.vmap(one)(descriptor_maps, true_landmarks, true_pose)


_stage_inputs_jit = jax.jit(_stage_inputs, static_argnames=("config",))


def fit_cascade(batches: Callable[[], Iterable[Batch]], alignment_model: cascade.AlignmentModel,
                initial_pose: Array, config: cascade.CascadeConfig,
                landmark_regularisation: float = 20.0, pose_regularisation: float = 10.0,
                log: Callable[[str], None] = print) -> cascade.CascadeParams:
  """Learns all ``config.num_stages`` stages.

  Args:
    batches: called once per stage; yields training batches (see ``Batch``), the same faces in
      the same order every call.
    alignment_model: model and normals.
    initial_pose: ``[6]`` mean training pose in the crop frame (the cascade's start).
    config: static settings (``num_stages``, ``crop_size``, ...).
    landmark_regularisation, pose_regularisation: ridge lambdas.
    log: progress messages.

  Returns:
    :class:`dff_jax.alignment.cascade.CascadeParams` with ``K = config.num_stages`` stages.
  """
  params = None
  for stage in range(config.num_stages):
    gram = cross_landmarks = cross_pose = None
    pose_sum = pose_sq_sum = 0.0
    count = 0.0
    error_sum = 0.0
    for descriptor_maps, true_landmarks, true_pose, weight in batches():
      if params is None:  # first batch ever: sizes are now known
        feature_dim = cascade.NUM_LANDMARKS * descriptor_maps.shape[-1] + 1
        params = cascade.CascadeParams(
            landmark_weights=jnp.zeros((0, feature_dim, 2 * cascade.NUM_LANDMARKS)),
            pose_weights=jnp.zeros((0, feature_dim, cascade.POSE_DIM)),
            pose_std=jnp.zeros((0, cascade.POSE_DIM)),
            initial_pose=jnp.asarray(initial_pose, jnp.float32))
      features, landmark_residual, pose_residual, _ = _stage_inputs_jit(
          alignment_model, params, config, descriptor_maps, true_landmarks, true_pose)
      w = np.asarray(weight, np.float64)[:, None]
      f = np.asarray(features, np.float64)
      y_landmarks = np.asarray(landmark_residual, np.float64)
      y_pose = np.asarray(pose_residual, np.float64)
      if gram is None:
        gram = np.zeros((f.shape[1], f.shape[1]))
        cross_landmarks = np.zeros((f.shape[1], y_landmarks.shape[1]))
        cross_pose = np.zeros((f.shape[1], y_pose.shape[1]))
      gram += (f * w).T @ f
      cross_landmarks += (f * w).T @ y_landmarks
      cross_pose += (f * w).T @ y_pose
      pose_sum = pose_sum + (w * y_pose).sum(0)
      pose_sq_sum = pose_sq_sum + (w * y_pose**2).sum(0)
      count += w.sum()
      error_sum += float((w[:, 0] * np.sqrt(
          (y_landmarks.reshape(len(w), -1, 2)**2).sum(-1)).mean(-1)).sum())
    if params is None or count == 0:
      raise ValueError("fit_cascade: the batch function yielded no training faces")
    pose_mean = pose_sum / count
    pose_std = np.sqrt(np.maximum(pose_sq_sum / count - pose_mean**2, 1e-12))
    landmark_weights = ridge_solve(gram, cross_landmarks, landmark_regularisation)
    pose_weights = ridge_solve(gram, cross_pose / pose_std, pose_regularisation)
    log(f"stage {stage}: {int(count)} faces, mean landmark error before the stage "
        f"{error_sum / count:.3f} crop px")
    params = params.replace(
        landmark_weights=jnp.concatenate([params.landmark_weights, landmark_weights[None]]),
        pose_weights=jnp.concatenate([params.pose_weights, pose_weights[None]]),
        pose_std=jnp.concatenate([params.pose_std,
                                  jnp.asarray(pose_std, jnp.float32)[None]]))
  return params
