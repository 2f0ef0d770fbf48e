"""Landmark visibility against a brute-force depth test that does not use the rasteriser.

Ground truth here: a landmark is hidden when the ray from its 3D position towards the camera
(weak perspective: the camera-space +z direction, "z to the viewer") crosses the face mesh more
than the pipeline's landmark depth tolerance (1 mm) in front of it. Every triangle of the full
model mesh is tested with the Moller-Trumbore ray-triangle intersection in NumPy; the rotation is
the textbook ``Rz(roll) Ry(yaw) Rx(pitch)`` written out here.

At +-80 degrees yaw the far eye (the subject's left, 42-47, for positive yaw: the nose turns to
the image right) lies 30-60 mm behind the nose and brow and must be hidden. The near eye is mostly
visible, but not entirely: with this mesh the ray from its inner corner passes through its own
eyeball and the outer lid margin sits ~2 mm under the lid fold, so the tests require the near eye's
brute-force-visible points to be marked visible rather than all six.

Checked: the generated faces' ``landmarks_visible`` (:class:`data_pipeline.faces.FaceSource`,
what the fine-tuning loss weights its landmark errors by, and the fine-tuning batches made from
it) and the cascade's smoothed-normal visibility (:func:`dff_jax.alignment.cascade.project_landmarks`)
on the far and near eyes.
"""

import math

import numpy as np
import pytest

TOLERANCE_MM = 1.0  # data_pipeline.config.PipelineConfig.landmark_depth_tolerance_mm
MARGIN_MM = 0.25    # decisions this close to the tolerance are not compared
RIGHT_EYE = list(range(36, 42))  # the subject's right eye: the near one at positive yaw
LEFT_EYE = list(range(42, 48))


def rotation_matrix(pitch, yaw, roll):
  ca, sa = math.cos(pitch), math.sin(pitch)
  cb, sb = math.cos(yaw), math.sin(yaw)
  cc, sc = math.cos(roll), math.sin(roll)
  rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
  ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
  rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
  return rz @ ry @ rx


def occluding_depth(points, vertices, triangles):
  """For each point ``[N, 3]`` (camera space, mm), the largest distance along the ray towards the
  camera (+z) at which it crosses a triangle (Moller-Trumbore), or -inf when it crosses none."""
  a, b, c = (vertices[triangles[:, k]] for k in range(3))
  edge1, edge2 = b - a, c - a
  direction = np.array([0.0, 0.0, 1.0])
  p = np.cross(direction, edge2)                       # [T, 3]
  det = np.einsum("td,td->t", edge1, p)
  ok = np.abs(det) > 1e-12
  inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
  out = np.full(len(points), -np.inf)
  for n, origin in enumerate(np.asarray(points, np.float64)):
    s = origin - a
    u = np.einsum("td,td->t", s, p) * inv
    q = np.cross(s, edge1)
    v = (q @ direction) * inv
    t = np.einsum("td,td->t", edge2, q) * inv
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1)
    if np.any(hit):
      out[n] = t[hit].max()
  return out


@pytest.fixture(scope="module")
def model():
  from dff_jax.face_model import load_face_model
  return load_face_model("default")


@pytest.fixture(scope="module")
def faces():
  """Generated faces at exactly +-80 degrees yaw (a normal yaw of huge spread clipped to the
  range), no pitch or roll, the full mesh rendered (no decimation)."""
  from data_pipeline import faces as faces_lib
  from data_pipeline.config import pipeline_config_from_dict
  config = pipeline_config_from_dict(dict(
      image_size=64, num_views=2, num_correspondences=8, yaw_distribution="normal",
      yaw_std_deg=1e6, max_yaw_deg=80.0, max_pitch_deg=0.0, max_roll_deg=0.0, shadows=False,
      render_max_triangles=0), seed=7)
  source = faces_lib.FaceSource(config, num_examples=6)
  examples = [source[i] for i in range(len(source))]
  yaws = np.round(np.degrees([e["pose"][2] for e in examples]), 3)
  assert set(yaws) == {-80.0, 80.0}, yaws
  return source, examples


def face_truth(model, example):
  """Camera-space landmark points (mm) of a generated face and the brute-force occluding depth
  of each; the jaw points' vertices are the contour candidates that project onto the
  annotation."""
  scale, pitch, yaw, roll, tx, ty = np.asarray(example["pose"], np.float64)
  rotation = rotation_matrix(pitch, yaw, roll)
  vertices = (np.asarray(model.mean_vertices, np.float64)
              + np.einsum("k,kvd->vd", np.asarray(example["shape_coefficients"], np.float64),
                          np.asarray(model.identity_basis, np.float64))
              + np.einsum("k,kvd->vd", np.asarray(example["expression_coefficients"], np.float64),
                          np.asarray(model.expression_basis, np.float64)))
  camera = vertices @ rotation.T
  image = np.stack([scale * camera[:, 0] + tx, -scale * camera[:, 1] + ty], axis=1)
  ids = np.asarray(model.landmark_vertex_ids, np.int64).copy()
  annotation = np.asarray(example["landmarks_px"], np.float64)
  for row, candidates in enumerate(np.asarray(model.contour_candidates, np.int64)):
    ids[row] = candidates[np.argmin(np.linalg.norm(image[candidates] - annotation[row], axis=1))]
  np.testing.assert_allclose(image[ids], annotation, atol=1e-3)  # the points annotated
  depth = occluding_depth(camera[ids], camera, np.asarray(model.triangles, np.int64))
  return yaw, depth


def check_against_truth(visible, yaw, depth, where):
  visible = np.asarray(visible, bool)
  far, near = (LEFT_EYE, RIGHT_EYE) if yaw > 0 else (RIGHT_EYE, LEFT_EYE)
  # The truth itself: the far eye is deep behind the face, some of the near eye is in sight.
  assert np.all(depth[far] > 10.0), (where, depth[far])
  near_visible = [k for k in near if depth[k] < TOLERANCE_MM - MARGIN_MM]
  assert len(near_visible) >= 2, (where, depth[near])
  assert not np.any(visible[far]), f"{where}: far-eye landmarks marked visible"
  assert np.all(visible[near_visible]), f"{where}: visible near-eye landmarks marked hidden"
  # Every clear-cut landmark agrees with the depth test.
  clear = np.abs(depth - TOLERANCE_MM) > MARGIN_MM
  truth = depth <= TOLERANCE_MM
  assert clear.sum() >= 60, where
  disagree = np.nonzero(clear & (visible != truth))[0]
  assert disagree.size == 0, f"{where}: landmarks {disagree.tolist()} disagree with the depth test"


def test_generated_faces_visibility_matches_the_depth_test(model, faces):
  _, examples = faces
  for example in examples:
    yaw, depth = face_truth(model, example)
    check_against_truth(example["landmarks_visible"], yaw, depth,
                        f"face {int(example['index'])} yaw {math.degrees(yaw):+.0f}")


def test_finetuning_batches_carry_the_true_visibility(model, faces):
  """The fine-tuning loss weights landmark errors by the batch's ``landmarks_visible``."""
  from dff_jax.training import finetune
  source, examples = faces
  batch = finetune.step_batch(source, 0, len(examples), len(examples), 0, len(examples))
  for n, example in enumerate(examples):
    yaw, depth = face_truth(model, example)
    check_against_truth(batch["landmarks_visible"][n], yaw, depth, f"batch row {n}")


@pytest.mark.parametrize("yaw_deg", [-80.0, 80.0])
def test_cascade_visibility_of_the_eyes_at_80_degrees(model, yaw_deg):
  """The cascade's smoothed-normal visibility of the mean face (what it samples descriptors
  at): the far eye hidden and the near eye's visible points visible, as the depth test says."""
  import jax.numpy as jnp
  from dff_jax.alignment import cascade
  alignment_model = cascade.make_alignment_model(model)
  yaw = math.radians(yaw_deg)
  pose = jnp.array([1.0, 0.0, yaw, 0.0, 0.0, 0.0], jnp.float32)
  _, visibility, _ = cascade.project_landmarks(
      alignment_model, pose, jnp.zeros(model.num_identity), jnp.zeros(model.num_expression))
  camera = np.asarray(model.mean_vertices, np.float64) @ rotation_matrix(0.0, yaw, 0.0).T
  eyes = np.asarray(model.landmark_vertex_ids, np.int64)[36:48]
  depth = np.full(68, np.nan)
  depth[36:48] = occluding_depth(camera[eyes], camera, np.asarray(model.triangles, np.int64))
  visible = np.asarray(visibility) > 0.5
  far, near = (LEFT_EYE, RIGHT_EYE) if yaw > 0 else (RIGHT_EYE, LEFT_EYE)
  assert np.all(depth[far] > 10.0)
  assert not np.any(visible[far]), visible[36:48]
  near_visible = [k for k in near if depth[k] < TOLERANCE_MM - MARGIN_MM]
  assert len(near_visible) >= 2 and np.all(visible[near_visible]), (depth[near], visible[near])
