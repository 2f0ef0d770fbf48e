"""Tests of the cascade's shape fit restricted to a few directions of the coefficient space
(dff_jax.alignment.cascade.fit_subspace / with_fit_modes / fit_modes_of; issue 12)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.test_util import check_grads

from dff_jax import geometry
from dff_jax.alignment import cascade
from dff_jax.face_model import load_face_model
from dff_jax.training import finetune

from test_cascade import centred_pose


def _default_alignment_model(modes=None):
  return cascade.with_fit_modes(cascade.make_alignment_model(load_face_model("default")), modes)


def test_fit_subspace_finds_planted_principal_directions():
  """A basis built as ``U diag(sigma) V^T S^-1`` (orthonormal U, V; sigma falling; S the prior's
  standard deviations): the first m rows of T are the first m columns of V scaled by S (up to
  sign), and the prior in them is the identity (T diag(precision) T^T = I)."""
  rng = np.random.default_rng(0)
  rows, size, modes = 20, 9, 4
  u, _ = np.linalg.qr(rng.normal(size=(rows * 3, size)))
  v, _ = np.linalg.qr(rng.normal(size=(size, size)))
  sigma = np.array([50.0, 20.0, 9.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.1])
  precision = np.concatenate([np.ones(5), 1.0 / np.array([0.3, 0.5, 0.2, 0.8]) ** 2])
  scale = 1.0 / np.sqrt(precision)
  basis = ((u * sigma) @ v.T / scale).reshape(rows, 3, size)
  t = cascade.fit_subspace(basis.astype(np.float32), precision, modes)
  assert t.shape == (modes, size) and t.dtype == np.float32
  planted = (v[:, :modes] * scale[:, None]).T
  for found, truth in zip(t, planted):
    np.testing.assert_allclose(found * np.sign(found @ truth), truth, atol=1e-4)
  np.testing.assert_allclose(t @ np.diag(precision) @ t.T, np.eye(modes), atol=1e-4)


def test_fit_recovers_coefficients_planted_in_the_subspace():
  """Landmarks made from coefficients ``z @ T`` (40 directions of the default model's 113) under
  a turned pose: the restricted refit (tiny regularisation) gives back those coefficients and
  landmarks, and the state still carries all 60 + 53 coefficients."""
  am = _default_alignment_model(40)
  model = am.face_model
  assert am.landmark_basis.shape == (244, 3, 113)  # WORKSPACE.md section 15 quotes both sizes
  assert am.fit_basis.shape == am.landmark_basis.shape[:2] + (40,)
  pose = jnp.asarray(centred_pose(30.0, crop_size=128))
  rotation = cascade.pose_rotation(pose)
  z = jnp.asarray(np.random.default_rng(1).normal(size=40) * 0.7, jnp.float32)
  truth = cascade.fit_to_coefficients(am, z)
  ids = cascade.project_landmarks(am, pose, truth[:model.num_identity],
                                  truth[model.num_identity:])[2]
  mean, basis = cascade.landmark_rows(am, ids)
  points = mean + jnp.einsum("njk,k->nj", basis, truth, precision="highest")
  landmarks = geometry.weak_perspective_project(points, pose[0], rotation, pose[4:6])
  config = cascade.CascadeConfig(crop_size=128, shape_regularisation=1e-6)
  state = jax.jit(lambda l, p: cascade.refit(am, l, p, jnp.ones(68), config))(landmarks, pose)
  assert state.shape_coefficients.shape == (60,) and state.expression_coefficients.shape == (53,)
  np.testing.assert_allclose(np.asarray(state.landmarks_px), np.asarray(landmarks), atol=1e-2)
  fitted = jnp.concatenate([state.shape_coefficients, state.expression_coefficients])
  np.testing.assert_allclose(np.asarray(fitted), np.asarray(truth), atol=2e-2)
  assert float(jnp.abs(truth[:5]).max()) > 0.3  # The planted shape is not the mean.


def test_every_direction_gives_the_full_fit():
  """With all 113 directions the restricted fit is the full one (same objective: the prior
  ``|z|^2`` is ``lambda c^T P c``), on noisy landmarks with part of them weighted out; with 20
  it differs."""
  full, every, few = (_default_alignment_model(m) for m in (None, 113, 20))
  pose = jnp.asarray(centred_pose(20.0, crop_size=128))
  start, _, _ = cascade.project_landmarks(full, pose, jnp.zeros(60), jnp.zeros(53))
  landmarks = start + 2.0 * jax.random.normal(jax.random.key(2), start.shape)
  weights = jnp.ones(68).at[36:42].set(0.0)
  config = cascade.CascadeConfig(crop_size=128, shape_regularisation=10.0)
  states = [cascade.refit(am, landmarks, pose, weights, config) for am in (full, every, few)]
  coefficients = [np.concatenate([s.shape_coefficients, s.expression_coefficients])
                  for s in states]
  np.testing.assert_allclose(coefficients[1], coefficients[0], atol=2e-3)
  np.testing.assert_allclose(np.asarray(states[1].landmarks_px),
                             np.asarray(states[0].landmarks_px), atol=1e-3)
  assert np.abs(coefficients[2] - coefficients[0]).max() > 1e-2

  def objective(c):  # What the full fit minimises; the 20-direction fit cannot do better.
    shape, expression = c[:60], c[60:]
    fitted, _, _ = cascade.project_landmarks(full, pose, shape, expression)
    data = np.sum(np.asarray(weights)[:, None] * (np.asarray(fitted) - np.asarray(landmarks))
                  ** 2) / float(pose[0]) ** 2
    prior = np.asarray(cascade.fit_precision(full))
    return data + 10.0 * np.sum(prior * c ** 2)

  assert objective(coefficients[0]) <= objective(coefficients[2]) + 1e-3


def test_gradients_through_the_restricted_fit():
  """check_grads of the restricted refit's landmarks with respect to the target landmarks and the
  pose."""
  am = _default_alignment_model(24)
  pose = jnp.asarray(centred_pose(25.0, crop_size=128))
  start, _, _ = cascade.project_landmarks(am, pose, jnp.zeros(60), jnp.zeros(53))
  landmarks = start + jax.random.normal(jax.random.key(3), start.shape)
  config = cascade.CascadeConfig(crop_size=128)

  def fit(landmarks_, pose_):
    state = cascade.refit(am, landmarks_, pose_, jnp.ones(68), config)
    return jnp.sum(state.landmarks_px[:20]) + jnp.sum(state.shape_coefficients[:4])

  check_grads(fit, (landmarks, pose), order=1, modes=("rev",), atol=5e-2, rtol=5e-2, eps=1e-2)


def test_a_cascade_file_names_its_fit_modes():
  """``meta["fit_modes"]`` builds the restricted fit; a missing entry is the full fit; a damaged
  one is refused with a message naming it."""
  model = load_face_model("default")
  assert cascade.alignment_model_for(model, {}).fit_basis is None
  am = cascade.alignment_model_for(model, {"fit_modes": 7})
  assert am.fit_basis.shape[-1] == 7 and am.fit_coefficients.shape == (7, 113)
  np.testing.assert_array_equal(cascade.fit_precision(am), np.ones(7))
  for bad in (0, -3, True, "40", 2.5):
    with pytest.raises(ValueError, match="fit_modes"):
      cascade.fit_modes_of({"fit_modes": bad})
  with pytest.raises(ValueError, match="between 1 and 113"):
    cascade.alignment_model_for(model, {"fit_modes": 114})


def test_finetune_sets_or_keeps_the_fit_modes():
  """``config.fit_modes``: 0 keeps the starting cascade's (none: the full fit), a positive value
  sets it, a negative one is refused."""
  config = ml_collections.ConfigDict({"fit_modes": 0})
  assert finetune.fit_modes_for(config, {}) is None
  assert finetune.fit_modes_for(config, {"fit_modes": 30}) == 30
  config.fit_modes = 20
  assert finetune.fit_modes_for(config, {"fit_modes": 30}) == 20
  config.fit_modes = -1
  with pytest.raises(ValueError, match="fit_modes"):
    finetune.fit_modes_for(config, {})


def test_an_aligner_may_override_its_cascades_fit_modes():
  """``resolve_aligner(fit_modes=...)`` (``eval_alignment --fit_modes``): the loaded aligner's
  fit has that many directions; without it, the cascade file's own; a bad value is refused
  before anything loads."""
  from dff_jax.alignment import runner
  own = runner.load_aligner(runner.resolve_aligner("fast"), cache=False)
  expected = own.meta.get("fit_modes")
  fit_basis = own.alignment_model.fit_basis
  assert (fit_basis is None) == (expected is None)
  assert expected is None or fit_basis.shape[-1] == expected
  other = runner.load_aligner(runner.resolve_aligner("fast", fit_modes=12), cache=False)
  assert other.alignment_model.fit_basis.shape[-1] == 12
  for bad in (0, -1, True, 2.0):
    with pytest.raises(ValueError, match="--fit_modes must be a positive integer"):
      runner.resolve_aligner("fast", fit_modes=bad)
