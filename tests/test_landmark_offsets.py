"""Tests of the cascade's landmark convention (``landmark_offsets``): the offsets recovered from
planted annotations, render labels moved into the convention, and the offsets through cascade
files, the aligner and the fine-tuning's settings."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dff_jax import geometry
from dff_jax import real_fits
from dff_jax.alignment import cascade
from dff_jax.alignment import io as cascade_io
from dff_jax.face_model import MIRROR_LANDMARKS
from dff_jax.face_model import model as face_model_lib
from dff_jax.training import finetune
from test_cascade import CROP, centred_pose, small_alignment_model, small_face_model, zero_params

FLIP_X = np.array([-1.0, 1.0, 1.0])


def planted_offsets(seed=0, size_mm=2.5):
  """Left-right symmetric ``[68, 3]`` offsets (mm) on the 51 inner points, zero on the jaw."""
  offsets = np.random.default_rng(seed).normal(0.0, size_mm, (68, 3))
  offsets[:17] = 0.0
  offsets = 0.5 * (offsets + offsets[list(MIRROR_LANDMARKS)] * FLIP_X)
  return offsets.astype(np.float32)


def planted_annotations(offsets, num_faces=240, seed=1):
  """A fit cache's arrays for faces of the mean shape whose annotators put every landmark at its
  vertex moved by ``offsets`` (poses: yaw within 40 degrees, pitch 15, roll 10, image pixels)."""
  model = small_face_model()
  am = small_alignment_model()
  rng = np.random.default_rng(seed)
  pitch, yaw, roll = (np.radians(rng.uniform(-a, a, num_faces)) for a in (15, 40, 10))
  pose = np.stack([rng.uniform(1.5, 3.0, num_faces), pitch, yaw, roll,
                   rng.uniform(150, 250, num_faces), rng.uniform(150, 250, num_faces)], 1)
  pose = pose.astype(np.float32)
  rotation = np.asarray(geometry.euler_to_matrix(pose[:, 1], pose[:, 2], pose[:, 3]))
  vertex_ids = np.asarray(face_model_lib.landmark_vertex_ids_for_pose(model, rotation))
  points = np.asarray(model.mean_vertices)[vertex_ids] + offsets        # [N, 68, 3]
  annotation = np.asarray(geometry.weak_perspective_project(
      points, pose[:, 0], rotation, pose[:, 4:6]), np.float32)
  del am
  return dict(pose=pose, landmark_vertex_ids=vertex_ids.astype(np.int32),
              landmarks_px=annotation, keep=np.ones(num_faces, bool))


def refit_residual_px(fits, offsets):
  """Mean point error (px) of the cascade's shape refit to the annotations under the true poses,
  with the alignment model's landmarks moved by ``offsets``."""
  am = small_alignment_model().replace(landmark_offsets=jnp.asarray(offsets, jnp.float32))

  def one(p, ids, target):
    rotation = cascade.pose_rotation(p)
    mean, basis = cascade.landmark_rows(am, ids)
    c = cascade.fit_shape_rows(am, mean, basis, target, p, rotation, jnp.ones(68), 10.0)
    points = mean + jnp.einsum("njk,k->nj", basis, c)
    return geometry.weak_perspective_project(points, p[0], rotation, p[4:6])

  fitted = jax.vmap(one)(fits["pose"], fits["landmark_vertex_ids"], fits["landmarks_px"])
  return float(np.mean(np.linalg.norm(np.asarray(fitted) - fits["landmarks_px"], axis=-1)))


def test_estimate_recovers_planted_offsets():
  truth = planted_offsets()
  fits = planted_annotations(truth)
  estimate = real_fits.estimate_landmark_offsets(small_face_model(), fits, num_rounds=8)
  assert estimate.shape == (68, 3) and estimate.dtype == np.float32
  np.testing.assert_array_equal(estimate[:17], 0.0)                     # the jaw keeps none
  np.testing.assert_allclose(estimate, estimate[list(MIRROR_LANDMARKS)] * FLIP_X, atol=1e-5)
  # The model's own vertices leave a planted bias of several pixels; the estimate removes it.
  assert refit_residual_px(fits, np.zeros((68, 3))) > 3.0
  assert refit_residual_px(fits, estimate) < 0.1
  assert np.mean(np.linalg.norm(estimate - truth, axis=-1)[17:]) < 0.1   # mm


def test_estimate_of_unbiased_annotations_is_zero():
  fits = planted_annotations(np.zeros((68, 3), np.float32))
  estimate = real_fits.estimate_landmark_offsets(small_face_model(), fits)
  assert np.max(np.abs(estimate)) < 1e-2


def test_estimate_skips_dropped_faces_and_refuses_none():
  truth = planted_offsets()
  fits = planted_annotations(truth, num_faces=120)
  fits["landmarks_px"][:40] += 30.0         # bad fits the cache marks as dropped
  fits["keep"][:40] = False
  estimate = real_fits.estimate_landmark_offsets(small_face_model(), fits)
  assert np.mean(np.linalg.norm(estimate - truth, axis=-1)[17:]) < 0.2
  fits["keep"][:] = False
  with pytest.raises(ValueError, match="keeps no face"):
    real_fits.estimate_landmark_offsets(small_face_model(), fits)


def test_render_labels_move_into_the_convention():
  """A render's labels (the model's vertices projected) plus the convention's shift equal the
  cascade's own projection of the offset landmarks, at any pose; annotated faces stay put."""
  offsets = planted_offsets(seed=3)
  plain = small_alignment_model()
  moved = plain.replace(landmark_offsets=jnp.asarray(offsets))
  shape = jnp.asarray(np.random.default_rng(4).normal(0, 0.5, 6), jnp.float32)
  expression = jnp.zeros((4,), jnp.float32)
  for yaw, pitch, roll in ((0.0, 0.0, 0.0), (55.0, -12.0, 8.0), (-80.0, 20.0, -15.0)):
    pose = centred_pose(yaw).copy()
    pose[1], pose[3] = np.radians(pitch), np.radians(roll)
    labels, _, _ = cascade.project_landmarks(plain, jnp.asarray(pose), shape, expression)
    expected, _, _ = cascade.project_landmarks(moved, jnp.asarray(pose), shape, expression)
    got = cascade.model_labels_in_convention(moved, labels, pose, True)
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert float(jnp.max(jnp.abs(expected - labels))) > 0.3   # the offsets matter (px)
    np.testing.assert_array_equal(cascade.model_labels_in_convention(moved, labels, pose, False),
                                  labels)
  # Batched, with a per-face flag; zero offsets change nothing.
  batch = jnp.stack([labels, labels])
  poses = np.stack([pose, pose])
  out = cascade.model_labels_in_convention(moved, batch, poses, np.array([True, False]))
  np.testing.assert_allclose(out[0], expected, atol=1e-3)
  np.testing.assert_array_equal(out[1], labels)
  np.testing.assert_array_equal(cascade.model_labels_in_convention(plain, batch, poses, True),
                                batch)


def test_offsets_move_the_cascade_output_and_the_3d_points():
  """With zero regressors the cascade returns its initial estimate: the offset landmarks under
  the initial pose (both conventions' inner points move by the projected offset)."""
  offsets = planted_offsets(seed=5)
  pose = centred_pose(30.0)
  params = zero_params(2, 4, yaw_deg=30.0)
  config = cascade.CascadeConfig(num_stages=2, crop_size=CROP)
  maps = jnp.zeros((1, CROP, CROP, 4), jnp.float32)
  box = jnp.array([[0.0, 0.0, CROP, CROP]], jnp.float32)
  plain = cascade.align_crops(small_alignment_model(), params, maps, config)
  moved_model = small_alignment_model().replace(landmark_offsets=jnp.asarray(offsets))
  moved = cascade.state_to_image(cascade.align_crops(moved_model, params, maps, config), box,
                                 CROP, moved_model)
  expected = cascade.model_labels_in_convention(moved_model, plain.landmarks_px[0], pose, True)
  np.testing.assert_allclose(moved.landmarks_px[0], expected, atol=1e-3)
  np.testing.assert_allclose(moved.landmarks_3d_px[0, 17:], expected[17:], atol=1e-3)


def test_cascade_files_carry_offsets_to_the_aligner(tmp_path):
  from dff_jax.alignment import runner
  offsets = planted_offsets(seed=6)
  params = zero_params(2, 128)
  config = cascade.CascadeConfig(num_stages=2, crop_size=CROP)
  meta = dict(features="sift", descriptor_dim=128, face_model="default")
  with_offsets = cascade_io.save_cascade(
      tmp_path / "with.npz", params, config,
      dict(meta, landmark_offsets_mm=offsets.astype(np.float64).tolist()))
  without = cascade_io.save_cascade(tmp_path / "without.npz", params, config, meta)
  aligner = runner.load_aligner(runner.resolve_aligner(str(with_offsets)), cache=False)
  np.testing.assert_allclose(aligner.alignment_model.landmark_offsets, offsets, atol=1e-6)
  aligner = runner.load_aligner(runner.resolve_aligner(str(without)), cache=False)
  np.testing.assert_array_equal(aligner.alignment_model.landmark_offsets, 0.0)
  bad = cascade_io.save_cascade(tmp_path / "bad.npz", params, config,
                                dict(meta, landmark_offsets_mm=[[1.0, 2.0]]))
  with pytest.raises(ValueError, match=r"landmark offsets must be a finite \[68, 3\]"):
    runner.load_aligner(runner.resolve_aligner(str(bad)), cache=False)


def test_finetune_offset_settings(tmp_path):
  model = small_face_model()
  offsets = planted_offsets(seed=7)
  meta = {"landmark_offsets_mm": offsets.tolist()}
  config = ml_collections.ConfigDict(dict(landmark_offsets=""))
  np.testing.assert_allclose(finetune.landmark_offsets_for(config, model, meta, 10.0), offsets)
  assert finetune.landmark_offsets_for(config, model, {}, 10.0) is None
  config.landmark_offsets = "none"
  assert finetune.landmark_offsets_for(config, model, meta, 10.0) is None
  config.landmark_offsets = "fits"
  with pytest.raises(ValueError, match="needs the real-face fit cache"):
    finetune.landmark_offsets_for(config, model, meta, 10.0)
  fits = planted_annotations(offsets, num_faces=120)
  np.savez(tmp_path / "fits.npz", **fits)
  config.real = ml_collections.ConfigDict(dict(fits=str(tmp_path / "fits.npz")))
  estimate = finetune.landmark_offsets_for(config, model, meta, 10.0)
  assert np.mean(np.linalg.norm(estimate - offsets, axis=-1)[17:]) < 0.2
  config.landmark_offsets = "vertices"
  with pytest.raises(ValueError, match="must be '', 'fits' or 'none'"):
    finetune.landmark_offsets_for(config, model, meta, 10.0)


def test_sources_say_whose_labels_they_carry():
  from data_pipeline import faces as faces_lib
  from data_pipeline.config import pipeline_config_from_dict
  config = pipeline_config_from_dict(dict(image_size=CROP, num_views=2, num_correspondences=16),
                                     seed=5)
  example = faces_lib.FaceSource(config, num_examples=1)[0]
  assert example["model_landmarks"] == np.bool_(True)
  assert finetune.select_fields(example)["model_landmarks"].dtype == bool


def non_rigid_distance_px(points, target):
  """``[N, 51]`` distances of the inner points after each face's best 2D similarity transform
  of ``points`` onto ``target`` (least squares, complex-number form)."""
  a = points[:, 17:, 0] + 1j * points[:, 17:, 1]
  b = target[:, 17:, 0] + 1j * target[:, 17:, 1]
  a0, b0 = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
  scale_turn = np.sum(np.conj(a0) * b0, 1, keepdims=True) / np.sum(np.abs(a0) ** 2, 1,
                                                                   keepdims=True)
  return np.abs(scale_turn * a0 - b0)


def test_sources_are_moved_into_the_reference_convention():
  """Two planted annotation sources of the same faces: the reference puts every landmark at its
  vertex moved by one set of offsets, the other by another. Moved into the reference's
  convention, the other source's annotations land on the reference's own up to a similarity
  transform per face (a whole-face shift, scale or turn of a convention cannot be told from a
  pose difference, so the move leaves it), from several pixels before."""
  reference_offsets, other_offsets = planted_offsets(seed=8), planted_offsets(seed=9)
  reference = planted_annotations(reference_offsets, num_faces=160, seed=10)
  other = planted_annotations(other_offsets, num_faces=160, seed=10)   # the same faces and poses
  landmarks = np.concatenate([reference["landmarks_px"], other["landmarks_px"]])
  sources = ["ref"] * 160 + ["other"] * 160
  moved, fits, report = real_fits.fit_in_reference_convention(
      small_face_model(), landmarks, sources, ["ref"])
  np.testing.assert_array_equal(moved[:160], reference["landmarks_px"])   # left unchanged
  before = non_rigid_distance_px(other["landmarks_px"], reference["landmarks_px"])
  after = non_rigid_distance_px(moved[160:], reference["landmarks_px"])
  assert before.mean() > 5.0 and after.mean() < 0.25 * before.mean()
  assert report["sources"]["ref"] == {"faces": 160}
  assert report["sources"]["other"]["mean_shift_px"] > 0.8 * before.mean()
  assert fits["pose"].shape == (320, 6)
  with pytest.raises(ValueError, match="no kept face of the reference sources"):
    real_fits.fit_in_reference_convention(small_face_model(), landmarks, sources, ["300w"])
