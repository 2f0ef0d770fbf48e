"""Learning the cascade's regressors stage by stage by ridge regression (SDM, as in the paper).

For stage k: apply stages ``0..k-1`` (already learned) to every training face, compute the stage
features ``f`` (:func:`dff_jax.alignment.cascade.stage_features`) and the remaining residuals
(true landmarks minus the current ones; true pose minus the current one), then solve

    W_k = argmin ||F W - Y_landmarks||^2 + lambda_landmarks ||W||^2
    V_k = argmin ||F V - Y_pose / sigma_k||^2 + lambda_pose ||V||^2

with ``sigma_k`` the standard deviation of stage k's pose residuals (paper values: lambda 20 and
10). Optionally (``regularisation_grid``) each stage picks its lambdas by validation: every
``validation_every``-th training face is held out, the ridge solutions of the other faces for
``lambda = base * m`` (m over the grid) are scored on the held-out faces from their sufficient
statistics alone (one eigendecomposition of the Gram matrix serves every lambda), and the best
lambda, rescaled to the full count, is used for the final solve on all faces. The sufficient statistics ``F^T F``, ``F^T Y``, ``sum Y`` and ``sum Y^2`` are accumulated over
batches (float64 on the host), so the training set never has to fit in memory: descriptor maps are
recomputed per stage from a batch function instead of stored.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dff_jax import descriptor_fields
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


@dataclasses.dataclass
class Statistics:
  """Sufficient statistics of a least-squares problem ``F W ~ Y`` (float64, host).

  Attributes:
    gram: ``[F, F]`` ``sum_n w_n f_n f_n^T``.
    cross: ``[F, T]`` ``sum_n w_n f_n y_n^T``.
    y_sq: ``[T]`` ``sum_n w_n y_n^2``.
    count: ``sum_n w_n``.
  """
  gram: np.ndarray
  cross: np.ndarray
  y_sq: np.ndarray
  count: float

  @classmethod
  def zeros(cls, feature_dim: int, target_dim: int) -> "Statistics":
    return cls(np.zeros((feature_dim, feature_dim)), np.zeros((feature_dim, target_dim)),
               np.zeros((target_dim,)), 0.0)

  def add(self, features: np.ndarray, targets: np.ndarray, weight: np.ndarray) -> None:
    """Accumulates rows ``features [N, F]``, ``targets [N, T]`` with weights ``[N]``."""
    self.add_sums(*batch_sums(features, targets, weight))

  def add_sums(self, gram: Array, cross: Array, y_sq: Array, count: Array) -> None:
    """Accumulates one batch's sums (as returned by :func:`batch_sums`)."""
    self.gram += np.asarray(gram, np.float64)
    self.cross += np.asarray(cross, np.float64)
    self.y_sq += np.asarray(y_sq, np.float64)
    self.count += float(count)

  def __add__(self, other: "Statistics") -> "Statistics":
    return Statistics(self.gram + other.gram, self.cross + other.cross, self.y_sq + other.y_sq,
                      self.count + other.count)

  def targets(self, columns: slice, scale: Any = 1.0) -> "Statistics":
    """The statistics of the target columns ``Y[:, columns] / scale`` (``scale`` [T'] or 1)."""
    return Statistics(self.gram, self.cross[:, columns] / scale,
                      self.y_sq[columns] / np.square(scale), self.count)


def batch_sums(features: Array, targets: Array, weight: Array) -> Tuple[Array, Array, Array, Array]:
  """One batch's ``(F^T W F [F, F], F^T W Y [F, T], sum w y^2 [T], sum w)``; works on NumPy
  (float64 host) or JAX arrays (inside the jitted stage function, float32 per batch)."""
  weighted = features * weight[:, None]
  return (weighted.T @ features, weighted.T @ targets, (weight[:, None] * targets**2).sum(0),
          weight.sum())


def spectrum(train: Statistics, held_out: Statistics) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(e [F], Q [F, F], Q^T G_h Q [F, F])`` with ``train.gram = Q diag(e) Q^T``: the part of
  :func:`select_regularisation` shared by every target group of the same faces."""
  eigenvalues, eigenvectors = np.linalg.eigh(train.gram)
  return eigenvalues, eigenvectors, eigenvectors.T @ held_out.gram @ eigenvectors


def select_regularisation(train: Statistics, held_out: Statistics, candidates: Sequence[float],
                          shared: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None
                          ) -> Tuple[float, np.ndarray]:
  """The ridge lambda (fitted on ``train``) with the least squared error on ``held_out``.

  With ``G = Q diag(e) Q^T``, ``W(lambda) = Q diag(1 / (e + lambda)) Q^T C`` and the held-out
  error ``tr(W^T G_h W) - 2 tr(W^T C_h) + sum y_h^2`` needs only the statistics.

  Args:
    train, held_out: statistics of the fitting and the held-out faces.
    candidates: lambdas to try (> 0).
    shared: :func:`spectrum` of the same statistics (computed here when not given).

  Returns:
    ``(best lambda, held-out mean squared error per face for every candidate [len(candidates)])``.
  """
  eigenvalues, eigenvectors, gram_h = shared if shared is not None else spectrum(train, held_out)
  projected = eigenvectors.T @ train.cross                              # [F, T]
  cross_h = eigenvectors.T @ held_out.cross                             # [F, T]
  errors = []
  for regularisation in candidates:
    coefficients = projected / (np.maximum(eigenvalues, 0.0) + regularisation)[:, None]
    sse = (np.sum(coefficients * (gram_h @ coefficients)) - 2.0 * np.sum(coefficients * cross_h)
           + held_out.y_sq.sum())
    errors.append(sse / max(held_out.count, 1.0))
  errors = np.asarray(errors)
  return float(candidates[int(np.argmin(errors))]), errors


def truncate(params: cascade.CascadeParams, num_stages: int) -> cascade.CascadeParams:
  """The first ``num_stages`` stages of ``params`` (``num_stages`` may be 0)."""
  return params.replace(**{name: getattr(params, name)[:num_stages]
                           for name in cascade.STAGE_FIELDS if getattr(params, name) is not None})


def _stage_inputs(alignment_model, params, config, descriptor_maps, true_landmarks, true_pose,
                  weight, held_out):
  """The next stage's regression statistics for a batch (jitted per number of stages).

  Returns ``(fitting sums, held-out sums, landmark errors [B] (mean crop px per face))``; the sums
  (:func:`batch_sums`) are over targets ``[landmark residuals (136) | pose residuals (6)]``, the
  faces split by the boolean ``held_out [B]``.
  """
  def one(descriptor_map, landmarks, pose):
    state = cascade.initial_state(alignment_model, params, config)
    if params.num_stages:
      state, _ = cascade.run_cascade(alignment_model, params, descriptor_map, config, state)
    features = cascade.stage_features(descriptor_map, state.landmarks_px, state.visibility)
    landmark_residual = landmarks - state.landmarks_px
    targets = jnp.concatenate([landmark_residual.reshape(-1), pose - state.pose])
    return features, targets, jnp.sqrt(jnp.sum(landmark_residual**2, -1)).mean()
  features, targets, errors = descriptor_fields.vmap_faces(one)(
      descriptor_maps, true_landmarks, true_pose)
  held = held_out.astype(features.dtype)
  return (batch_sums(features, targets, weight * (1.0 - held)),
          batch_sums(features, targets, weight * held), errors)


_stage_inputs_jit = jax.jit(_stage_inputs, static_argnames=("config",))


def _choose(train: Statistics, held_out: Statistics, base: float,
            grid: Optional[Sequence[float]], shared=None) -> Tuple[float, str]:
  """The lambda for the final solve on ``train + held_out`` and a log note."""
  if not grid or held_out.count == 0:
    return base, f"{base:g}"
  candidates = [base * m for m in grid]
  best, errors = select_regularisation(train, held_out, candidates, shared)
  # The penalty is relative to the data term: rescale it from the fitting faces to all faces.
  final = best * (train.count + held_out.count) / train.count
  note = ", ".join(f"{c:g}:{e:.3g}" for c, e in zip(candidates, errors))
  return final, f"{final:.4g} (held-out MSE by lambda {note})"


def fit_cascade(batches: Callable[[], Iterable[Batch]], alignment_model: cascade.AlignmentModel,
                initial_pose: Array, config: cascade.CascadeConfig,
                landmark_regularisation: float = 20.0, pose_regularisation: float = 10.0,
                log: Callable[[str], None] = print,
                regularisation_grid: Optional[Sequence[float]] = None,
                validation_every: int = 10) -> Tuple[cascade.CascadeParams, list]:
  """Learns all ``config.num_stages`` stages.

  Args:
    batches: called once per stage; yields training batches (see ``Batch``), the same faces in
      the same order every call.
    alignment_model: model and normals.
    initial_pose: ``[6]`` mean training pose in the crop frame (the cascade's start).
    config: static settings (``num_stages``, ``crop_size``, ...).
    landmark_regularisation, pose_regularisation: ridge lambdas (the base of the grid).
    log: progress messages.
    regularisation_grid: multipliers of the base lambdas to choose from by validation on every
      ``validation_every``-th face (``None`` or empty: the base lambdas as they are).
    validation_every: hold out faces ``0, k, 2k, ...`` (in batch order) for the choice.

  Returns:
    ``(params, stage_log)``: :class:`dff_jax.alignment.cascade.CascadeParams` with
    ``K = config.num_stages`` stages, and per stage a dict with the mean landmark error before it
    (crop px, all faces) and the lambdas used.
  """
  if validation_every < 2:
    raise ValueError(f"validation_every must be >= 2, got {validation_every}")
  num_landmark_targets = 2 * cascade.NUM_LANDMARKS
  landmark_columns = slice(0, num_landmark_targets)
  pose_columns = slice(num_landmark_targets, num_landmark_targets + cascade.POSE_DIM)
  params = None
  stage_log = []
  for stage in range(config.num_stages):
    fitting = held_out = None
    error_sum = 0.0
    face_index = 0
    for descriptor_maps, true_landmarks, true_pose, weight in batches():
      if params is None:  # first batch ever: sizes are now known
        feature_dim = (cascade.NUM_LANDMARKS * descriptor_fields.descriptor_dim(descriptor_maps)
                       + 1)
        params = cascade.CascadeParams(
            landmark_weights=jnp.zeros((0, feature_dim, num_landmark_targets)),
            pose_weights=jnp.zeros((0, feature_dim, cascade.POSE_DIM)),
            pose_std=jnp.zeros((0, cascade.POSE_DIM)),
            initial_pose=jnp.asarray(initial_pose, jnp.float32))
        fitting = held_out = None
      weight = np.asarray(weight, np.float32)
      is_held_out = np.zeros(len(weight), bool)
      if regularisation_grid:
        is_held_out = (face_index + np.arange(len(weight))) % validation_every == 0
      face_index += len(weight)
      fit_sums, held_sums, errors = _stage_inputs_jit(
          alignment_model, params, config, descriptor_maps, true_landmarks, true_pose,
          jnp.asarray(weight), jnp.asarray(is_held_out))
      if fitting is None:
        fitting = Statistics.zeros(*fit_sums[1].shape)
        held_out = Statistics.zeros(*fit_sums[1].shape)
      fitting.add_sums(*fit_sums)
      held_out.add_sums(*held_sums)
      error_sum += float(np.sum(weight * np.asarray(errors)))
    if params is None or fitting.count + held_out.count == 0:
      raise ValueError("fit_cascade: the batch function yielded no training faces")
    everything = fitting + held_out
    count = everything.count
    pose_mean = everything.cross[-1, pose_columns] / count  # the last feature is the constant 1
    pose_std = np.sqrt(np.maximum(everything.y_sq[pose_columns] / count - pose_mean**2, 1e-12))
    shared = (spectrum(fitting, held_out) if regularisation_grid and held_out.count
              else None)
    lambda_landmarks, note_landmarks = _choose(
        fitting.targets(landmark_columns), held_out.targets(landmark_columns),
        landmark_regularisation, regularisation_grid, shared)
    lambda_pose, note_pose = _choose(
        fitting.targets(pose_columns, pose_std), held_out.targets(pose_columns, pose_std),
        pose_regularisation, regularisation_grid, shared)
    landmark_weights = ridge_solve(everything.gram, everything.cross[:, landmark_columns],
                                   lambda_landmarks)
    pose_weights = ridge_solve(everything.gram, everything.cross[:, pose_columns] / pose_std,
                               lambda_pose)
    error = error_sum / count
    log(f"stage {stage}: {int(count)} faces, mean landmark error before the stage "
        f"{error:.3f} crop px; landmark lambda {note_landmarks}; pose lambda {note_pose}")
    stage_log.append(dict(stage=stage, landmark_error_before_px=error,
                          landmark_regularisation=lambda_landmarks,
                          pose_regularisation=lambda_pose))
    params = params.replace(
        landmark_weights=jnp.concatenate([params.landmark_weights, landmark_weights[None]]),
        pose_weights=jnp.concatenate([params.pose_weights, pose_weights[None]]),
        pose_std=jnp.concatenate([params.pose_std,
                                  jnp.asarray(pose_std, jnp.float32)[None]]))
  return params, stage_log
