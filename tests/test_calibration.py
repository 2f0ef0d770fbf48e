"""Tests of dff_jax.alignment.calibration (output offsets) and of how a cascade applies them:
planted model-space offsets are recovered from the errors they cause, and they move
``landmarks_px`` (only) by their projection."""

import jax.numpy as jnp
import numpy as np
import pytest

from dff_jax import geometry
from dff_jax.alignment import calibration
from dff_jax.alignment import cascade
from dff_jax.face_model import load_face_model
from dff_jax.face_model import model as face_model_lib


def _planted_views(n=40, seed=0):
  """``(poses [n, 6], predicted [n, 68, 2])``: random views (scale 1.5-4 px/mm, |yaw| <= 70,
  |pitch| <= 25, |roll| <= 20 degrees) and random predicted points."""
  rng = np.random.default_rng(seed)
  poses = np.stack([rng.uniform(1.5, 4.0, n), np.radians(rng.uniform(-25, 25, n)),
                    np.radians(rng.uniform(-70, 70, n)), np.radians(rng.uniform(-20, 20, n)),
                    rng.uniform(50, 150, n), rng.uniform(50, 150, n)], axis=1)
  return poses, rng.uniform(0, 200, (n, 68, 2))


def _shift_by_projection(poses, offsets):
  """``[n, 68, 2]`` image displacement of model-space ``offsets [68, 3]`` under each pose: the
  full weak perspective of ``offsets`` minus that of the origin (not the linear-part code under
  test)."""
  out = []
  for pose in poses:
    rotation = np.asarray(geometry.euler_to_matrix(pose[1], pose[2], pose[3]))
    moved = np.asarray(geometry.weak_perspective_project(offsets, pose[0], rotation, pose[4:6]))
    origin = np.asarray(geometry.weak_perspective_project(np.zeros((1, 3)), pose[0], rotation,
                                                          pose[4:6]))
    out.append(moved - origin)
  return np.stack(out)


def _symmetric(offsets):
  mirror = np.asarray(face_model_lib.MIRROR_LANDMARKS)
  return 0.5 * (offsets + offsets[mirror] * np.array([-1.0, 1.0, 1.0]))


def test_planted_symmetric_offsets_are_recovered():
  """Annotations = predictions + the projection of known symmetric offsets (zero on the jaw):
  the estimate returns those offsets."""
  poses, predicted = _planted_views()
  planted = _symmetric(np.random.default_rng(1).normal(0, 2.0, (68, 3)))
  planted[:17] = 0.0
  annotated = predicted + _shift_by_projection(poses, planted)
  got = calibration.estimate_output_offsets(predicted, annotated, poses, ridge=0.0)
  np.testing.assert_allclose(got, planted, atol=1e-4)
  # The default ridge shrinks them by about its weight only.
  np.testing.assert_allclose(calibration.estimate_output_offsets(predicted, annotated, poses),
                             planted, atol=0.02)


def test_asymmetric_offsets_give_their_symmetric_part_and_the_jaw_none():
  poses, predicted = _planted_views(seed=2)
  planted = np.random.default_rng(3).normal(0, 2.0, (68, 3))
  annotated = predicted + _shift_by_projection(poses, planted)
  got = calibration.estimate_output_offsets(predicted, annotated, poses, ridge=0.0)
  expected = _symmetric(planted)
  expected[:17] = 0.0
  np.testing.assert_allclose(got, expected, atol=1e-4)


def test_estimate_refuses_bad_input():
  poses, predicted = _planted_views(n=3)
  with pytest.raises(ValueError, match=r"\[N, 68, 2\]"):
    calibration.estimate_output_offsets(predicted[:, :5], predicted[:, :5], poses)
  with pytest.raises(ValueError, match="N >= 1"):
    calibration.estimate_output_offsets(predicted[:0], predicted[:0], poses[:0])
  bad = predicted.copy()
  bad[0, 20, 0] = np.nan
  with pytest.raises(ValueError, match="non-finite"):
    calibration.estimate_output_offsets(bad, predicted, poses)


def test_output_offsets_move_landmarks_px_only():
  """A frontal pose (no rotation) at scale s, crop box twice the crop size: an offset
  ``(dx, dy, dz)`` mm on every inner point moves each of them by ``2 s (dx, -dy)`` image pixels
  (y down); the jaw, ``landmarks_3d_px`` and the pose do not move."""
  model = load_face_model("default")
  offsets = np.zeros((68, 3), np.float32)
  offsets[17:] = (1.5, -2.0, 7.0)
  plain = cascade.make_alignment_model(model)
  moved = cascade.make_alignment_model(model, output_offsets=offsets)
  rng = np.random.default_rng(4)
  scale = 1.25
  state = cascade.AlignmentState(
      landmarks_px=jnp.asarray(rng.uniform(20, 100, (68, 2)), jnp.float32),
      visibility=jnp.ones(68), pose=jnp.array([scale, 0.0, 0.0, 0.0, 64.0, 60.0]),
      shape_coefficients=jnp.zeros(model.identity_basis.shape[0]),
      expression_coefficients=jnp.zeros(model.expression_basis.shape[0]))
  box = jnp.array([10.0, 20.0, 10.0 + 256.0, 20.0 + 256.0])   # 2 image px per crop px
  before = cascade.state_to_image(state, box, 128, plain)
  after = cascade.state_to_image(state, box, 128, moved)
  shift = np.asarray(after.landmarks_px) - np.asarray(before.landmarks_px)
  np.testing.assert_allclose(shift[17:], np.tile([2 * scale * 1.5, 2 * scale * 2.0], (51, 1)),
                             atol=1e-4)
  np.testing.assert_array_equal(shift[:17], 0.0)
  np.testing.assert_array_equal(after.landmarks_3d_px, before.landmarks_3d_px)
  np.testing.assert_array_equal(after.yaw_rad, before.yaw_rad)


def test_output_offsets_travel_in_the_cascade_meta():
  offsets = np.arange(204, dtype=np.float32).reshape(68, 3) / 100
  meta = {"output_offsets_mm": offsets.tolist(), "landmark_offsets_mm": (-offsets).tolist()}
  model = cascade.alignment_model_for(load_face_model("default"), meta)
  np.testing.assert_array_equal(model.output_offsets, offsets)
  np.testing.assert_array_equal(model.landmark_offsets, -offsets)
  assert cascade.output_offsets_of({}) is None
  with pytest.raises(ValueError, match=r"finite \[68, 3\]"):
    cascade.output_offsets_of({"output_offsets_mm": [[0.0, 1.0]]})
