"""Tests of dff_jax.alignment.regression: ridge solve, truncation, and stage-by-stage learning of
the cascade (fit_cascade) on a synthetic problem whose truth is a known function of the maps."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dff_jax.alignment import cascade
from dff_jax.alignment import regression

from test_cascade import CROP, centred_pose, small_alignment_model

NUM_STAGES = 3
CONFIG = cascade.CascadeConfig(num_stages=NUM_STAGES, crop_size=CROP)
BATCH = 16


def test_ridge_solve_matches_normal_equations():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(40, 7))
  targets = rng.normal(size=(40, 3))
  gram, cross = features.T @ features, features.T @ targets
  weights = regression.ridge_solve(gram, cross, 2.5)
  assert weights.dtype == np.float32 and weights.shape == (7, 3)
  np.testing.assert_allclose(weights, np.linalg.solve(gram + 2.5 * np.eye(7), cross), rtol=1e-5)
  # Noise-free, well-determined data and lambda ~ 0: the generating weights come back.
  true_weights = rng.normal(size=(7, 3))
  cross = features.T @ (features @ true_weights)
  np.testing.assert_allclose(regression.ridge_solve(gram, cross, 1e-9), true_weights, atol=1e-5)


def _statistics(features, targets):
  stats = regression.Statistics.zeros(features.shape[1], targets.shape[1])
  stats.add(features, targets, np.ones(len(features)))
  return stats


def test_select_regularisation_scores_match_explicit_solutions():
  """Held-out errors from the statistics equal those of explicitly solved weights, and with
  many noisy features the choice beats both a tiny and a huge lambda on fresh data."""
  rng = np.random.default_rng(0)
  true_weights = rng.normal(size=(30, 2)) * 0.3

  def draw(n):
    features = rng.normal(size=(n, 30))
    return features, features @ true_weights + rng.normal(size=(n, 2)) * 2.0

  train, held_out, fresh = draw(40), draw(200), draw(2000)
  candidates = [1e-3, 1.0, 10.0, 100.0, 1e5]
  best, errors = regression.select_regularisation(_statistics(*train), _statistics(*held_out),
                                                  candidates)
  for regularisation, error in zip(candidates, errors):
    weights = np.linalg.solve(train[0].T @ train[0] + regularisation * np.eye(30),
                              train[0].T @ train[1])
    explicit = np.sum((held_out[0] @ weights - held_out[1])**2) / len(held_out[0])
    np.testing.assert_allclose(error, explicit, rtol=1e-8)
  assert best not in (candidates[0], candidates[-1])

  def fresh_error(regularisation):
    weights = regression.ridge_solve(train[0].T @ train[0], train[0].T @ train[1],
                                     regularisation)
    return np.mean(np.sum((fresh[0] @ weights - fresh[1])**2, axis=1))

  assert fresh_error(best) < min(fresh_error(candidates[0]), fresh_error(candidates[-1]))


def test_fit_cascade_chooses_lambdas_on_held_out_faces(training_faces):
  messages = []
  config = cascade.CascadeConfig(num_stages=1, crop_size=CROP)
  _, stage_log = regression.fit_cascade(
      _batches(training_faces), small_alignment_model(), centred_pose(), config,
      landmark_regularisation=1.0, pose_regularisation=1.0, log=messages.append,
      regularisation_grid=(1e-4, 1.0, 1e4), validation_every=4)
  assert "held-out MSE by lambda" in messages[0]
  # Noise-free problem: the smallest lambda predicts the held-out faces best (rescaled to all
  # faces from the 3/4 used for fitting).
  np.testing.assert_allclose(stage_log[0]["landmark_regularisation"], 1e-4 * 4 / 3, rtol=1e-6)


def test_truncate_keeps_the_first_stages():
  params = cascade.CascadeParams(
      landmark_weights=jnp.arange(3.0)[:, None, None] * jnp.ones((3, 5, 136)),
      pose_weights=jnp.ones((3, 5, 6)), pose_std=jnp.ones((3, 6)), initial_pose=jnp.ones(6))
  one = regression.truncate(params, 1)
  assert one.num_stages == 1 and one.pose_weights.shape == (1, 5, 6)
  np.testing.assert_array_equal(one.landmark_weights, 0.0)
  none = regression.truncate(params, 0)
  assert none.num_stages == 0 and none.pose_std.shape == (0, 6)
  np.testing.assert_array_equal(none.initial_pose, params.initial_pose)


def synthetic_faces(seed, num_faces):
  """Faces whose truth is a known, noise-free function of their descriptor maps.

  Each face is the mean face at the initial pose, scaled by ``k`` about the crop centre ``o``
  and shifted by ``delta`` (crop pixels). Its descriptor map (D = 2) holds, at every pixel ``p``,
  the canonical position ``(p - delta - o) / k + o`` (divided by the crop size), i.e. where that
  pixel sits on the initial-pose face. The residual of a landmark at ``x`` is then
  ``k * (c - g(x))`` with ``c`` its initial position: linear in the features for ``k = 1``.

  Returns:
    ``(maps [N, CROP, CROP, 2], true_landmarks [N, 68, 2], true_pose [N, 6], weight [N])``.
  """
  rng = np.random.default_rng(seed)
  am = small_alignment_model()
  initial = centred_pose()
  centre = np.full(2, CROP / 2, np.float32)
  k = rng.uniform(0.95, 1.05, num_faces).astype(np.float32)
  delta = rng.uniform(-2.5, 2.5, (num_faces, 2)).astype(np.float32)
  poses = np.tile(initial, (num_faces, 1))
  poses[:, 0] *= k
  poses[:, 4:6] = k[:, None] * (initial[4:6] - centre) + centre + delta
  landmarks, _, _ = jax.vmap(cascade.project_landmarks, (None, 0, None, None))(
      am, jnp.asarray(poses), jnp.zeros(6), jnp.zeros(4))
  pixels = np.stack(np.meshgrid(np.arange(CROP) + 0.5, np.arange(CROP) + 0.5, indexing="xy"), -1)
  canonical = ((pixels[None] - delta[:, None, None] - centre) / k[:, None, None, None] + centre)
  return (jnp.asarray(canonical / CROP, jnp.float32), np.asarray(landmarks), poses,
          np.ones(num_faces, np.float32))


def _batches(faces):
  maps, landmarks, poses, weights = faces
  return lambda: ((maps[i:i + BATCH], landmarks[i:i + BATCH], poses[i:i + BATCH],
                   weights[i:i + BATCH]) for i in range(0, len(weights), BATCH))


def _stage_errors(params, faces):
  """Mean landmark error (crop px) at the start and after each stage, ``[K + 1]``."""
  maps, landmarks, _, _ = faces
  am = small_alignment_model()

  def one(descriptor_map):
    start = cascade.initial_state(am, params, CONFIG)
    _, stages = cascade.run_cascade(am, params, descriptor_map, CONFIG, start)
    return jnp.concatenate([start.landmarks_px[None], stages.landmarks_px])

  per_stage = jax.jit(jax.vmap(one))(maps)  # [N, K + 1, 68, 2]
  error = jnp.linalg.norm(per_stage - landmarks[:, None], axis=-1).mean(axis=(0, 2))
  return np.asarray(error)


@pytest.fixture(scope="module")
def training_faces():
  return synthetic_faces(seed=0, num_faces=2 * BATCH)


def test_fit_cascade_recovers_known_function(training_faces):
  messages = []
  params, stage_log = regression.fit_cascade(
      _batches(training_faces), small_alignment_model(), centred_pose(), CONFIG,
      landmark_regularisation=1e-4, pose_regularisation=1e-4, log=messages.append)
  assert [s["landmark_regularisation"] for s in stage_log] == [1e-4] * NUM_STAGES
  assert params.num_stages == NUM_STAGES and params.descriptor_dim == 2
  assert len(messages) == NUM_STAGES and all(f"{2 * BATCH} faces" in m for m in messages)
  # Logged training error before each stage decreases stage by stage.
  logged = [float(re.search(r"before the stage ([0-9.]+)", m).group(1)) for m in messages]
  assert all(b < a for a, b in zip(logged, logged[1:])), logged
  train_errors = _stage_errors(params, training_faces)
  np.testing.assert_allclose(train_errors[:NUM_STAGES], logged, rtol=1e-3, atol=1e-3)
  held_out_errors = _stage_errors(params, synthetic_faces(seed=1, num_faces=BATCH))
  for errors in (train_errors, held_out_errors):
    assert errors[0] > 1.0, errors  # The start is visibly off ...
    assert errors[-1] < 0.1 * errors[0], errors  # ... and the cascade fixes it,
    assert np.all(np.diff(errors) < 0), errors  # improving at every stage.
  # Stage 0's pose scale is the population standard deviation of its pose targets (truth minus
  # the initial pose; the constant angles get the 1e-6 floor).
  poses = training_faces[2]
  np.testing.assert_allclose(params.pose_std[0], np.maximum(np.std(poses, axis=0), 1e-6),
                             rtol=1e-3, atol=1e-7)
  # The pose was learned too: the translation residual of a held-out batch shrinks.
  maps, _, poses, _ = synthetic_faces(seed=2, num_faces=BATCH)
  final = jax.jit(jax.vmap(lambda m: cascade.run_cascade(
      small_alignment_model(), params, m, CONFIG)[0]))(maps)
  start_error = np.abs(poses[:, 4:6] - centred_pose()[4:6]).mean()
  assert np.abs(np.asarray(final.pose[:, 4:6]) - poses[:, 4:6]).mean() < 0.1 * start_error


def test_fit_cascade_ignores_zero_weight_faces(training_faces):
  """Faces with weight 0 (batch padding) do not change the regressors, whatever they hold."""
  maps, landmarks, poses, weights = training_faces
  garbage = synthetic_faces(seed=3, num_faces=4)
  padded_maps = maps.at[-4:].set(garbage[0])
  padded_landmarks = landmarks.copy()
  padded_landmarks[-4:] = garbage[1] + 5.0
  padded_poses = poses.copy()
  padded_poses[-4:] = garbage[2]
  zero_last = weights.copy()
  zero_last[-4:] = 0.0
  config = cascade.CascadeConfig(num_stages=2, crop_size=CROP)
  fit = lambda faces: regression.fit_cascade(  # noqa: E731
      _batches(faces), small_alignment_model(), centred_pose(), config, log=lambda _: None)[0]
  reference = fit((maps, landmarks, poses, zero_last))
  padded = fit((padded_maps, padded_landmarks, padded_poses, zero_last))
  for a, b in zip(jax.tree_util.tree_leaves(reference), jax.tree_util.tree_leaves(padded)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_fit_cascade_default_lambdas_are_the_papers(training_faces):
  """The ridge lambdas a caller gets by default are the paper's (landmarks 20, pose 10), as the
  alignment recipe (experiments/configs/align_cpu.py) sets them: a fit with the defaults equals
  one given 20 and 10, and differs from one given other values."""
  from experiments.configs import align_cpu
  config = align_cpu.get_config()
  assert (config.landmark_regularisation, config.pose_regularisation) == (20.0, 10.0)
  one_stage = cascade.CascadeConfig(num_stages=1, crop_size=CROP)
  fit = lambda *lambdas: regression.fit_cascade(  # noqa: E731
      _batches(training_faces), small_alignment_model(), centred_pose(), one_stage, *lambdas,
      log=lambda _: None)[0]
  default, paper, other = fit(), fit(20.0, 10.0), fit(20.0, 11.0)
  for name in ("landmark_weights", "pose_weights", "pose_std"):
    np.testing.assert_array_equal(getattr(default, name), getattr(paper, name))
  assert not np.allclose(default.pose_weights, other.pose_weights, rtol=1e-4, atol=0)
  assert not np.allclose(default.landmark_weights, fit(21.0, 10.0).landmark_weights, rtol=1e-4,
                         atol=0)


def test_fit_cascade_without_faces_raises():
  with pytest.raises(ValueError, match="no training faces"):
    regression.fit_cascade(lambda: iter(()), small_alignment_model(), centred_pose(), CONFIG,
                           log=lambda _: None)


def test_statistics_add_and_small_scale_single_face_scores():
  """Statistics of two parts add up to those of the whole; held-out errors match explicit ridge
  solutions also when every eigenvalue of the Gram matrix is below 1 and one face is held out."""
  rng = np.random.default_rng(7)
  features = rng.normal(size=(13, 5)) * 0.05      # Gram eigenvalues ~ 0.03
  targets = features @ rng.normal(size=(5, 3)) + rng.normal(size=(13, 3)) * 0.01
  whole = _statistics(features, targets)
  parts = _statistics(features[:6], targets[:6]) + _statistics(features[6:], targets[6:])
  for field in ("gram", "cross", "y_sq", "count"):
    np.testing.assert_allclose(getattr(parts, field), getattr(whole, field), rtol=1e-12,
                               err_msg=field)
  train, held_out = (features[:12], targets[:12]), (features[12:], targets[12:])
  assert np.linalg.eigvalsh(train[0].T @ train[0]).max() < 1.0
  candidates = [1e-4, 1e-2, 1.0]
  _, errors = regression.select_regularisation(_statistics(*train), _statistics(*held_out),
                                               candidates)
  for regularisation, error in zip(candidates, errors):
    weights = np.linalg.solve(train[0].T @ train[0] + regularisation * np.eye(5),
                              train[0].T @ train[1])
    np.testing.assert_allclose(error, np.sum((held_out[0] @ weights - held_out[1])**2),
                               rtol=1e-8)
