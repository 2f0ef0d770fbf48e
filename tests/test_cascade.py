"""Tests of dff_jax.alignment.cascade: one stage, the lax.scan cascade, batching, gradients,
contour / visibility, sharding, and images in -> results out (crop / uncrop)."""

import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from dff_jax import geometry
from dff_jax import sift
from dff_jax.alignment import cascade
from dff_jax.alignment import fitting
from dff_jax.alignment import regression
from dff_jax.face_model import load_face_model
from dff_jax.face_model import model as face_model_lib

from conftest import xla_flags

ROOT = Path(__file__).resolve().parents[1]
CROP = 32
DIM = 4  # Descriptor size of the toy descriptor maps.
# iBUG-68: the subject's right eye (image left when frontal) and left eye.
RIGHT_EYE, LEFT_EYE = list(range(36, 42)), list(range(42, 48))
_EXPRESSIONS = ("jawOpen", "mouthSmile_L", "eyeBlink_R", "browInnerUp_L")


@functools.lru_cache(maxsize=1)
def small_face_model():
  """The default model cut to 6 identity and 4 expression components (all vertices kept)."""
  model = load_face_model("default")
  names = tuple(model.expression_names)
  keep = [names.index(n) for n in _EXPRESSIONS if n in names] or list(range(4))
  return model.replace(
      identity_basis=np.asarray(model.identity_basis[:6], np.float32),
      expression_basis=np.asarray(model.expression_basis, np.float32)[keep],
      expression_std=np.asarray(model.expression_std, np.float32)[keep],
      expression_names=tuple(names[i] for i in keep) if names else ())


@functools.lru_cache(maxsize=1)
def small_alignment_model():
  return cascade.make_alignment_model(small_face_model())


def centred_pose(yaw_deg=0.0, crop_size=CROP):
  """``[6]`` pose putting the mean face's landmarks in the middle ~60% of the crop."""
  model = small_face_model()
  points = np.asarray(model.mean_vertices)[np.asarray(model.landmark_vertex_ids)]
  scale = 0.6 * crop_size / np.ptp(points[:, 0])
  centre = points.mean(0)
  return np.array([scale, 0.0, np.radians(yaw_deg), 0.0, crop_size / 2 - scale * centre[0],
                   crop_size / 2 + scale * centre[1]], np.float32)


def random_params(num_stages, descriptor_dim, key, weight_std=0.05, yaw_deg=0.0):
  """Random regressors moving landmarks by ~1 px and the pose by ~1 std per stage."""
  feature_dim = cascade.NUM_LANDMARKS * descriptor_dim + 1
  key_w, key_v = jax.random.split(key)
  std = weight_std / np.sqrt(descriptor_dim / DIM)
  return cascade.CascadeParams(
      landmark_weights=std * jax.random.normal(key_w, (num_stages, feature_dim, 136)),
      pose_weights=std * jax.random.normal(key_v, (num_stages, feature_dim, cascade.POSE_DIM)),
      pose_std=jnp.tile(jnp.asarray([[0.002, 0.02, 0.02, 0.02, 0.3, 0.3]]), (num_stages, 1)),
      initial_pose=jnp.asarray(centred_pose(yaw_deg)))


def zero_params(num_stages, descriptor_dim, yaw_deg=0.0):
  params = random_params(num_stages, descriptor_dim, jax.random.key(0), yaw_deg=yaw_deg)
  return params.replace(landmark_weights=jnp.zeros_like(params.landmark_weights),
                        pose_weights=jnp.zeros_like(params.pose_weights))


def smooth_maps(key, batch, size=CROP, dim=DIM):
  """``[batch, size, size, dim]`` float32 smooth random descriptor maps (blurred noise)."""
  noise = jax.random.normal(key, (batch, size + 4, size + 4, dim))
  kernel = jnp.ones((5, 5, 1, dim)) / 25.0
  return jax.lax.conv_general_dilated(noise, kernel, (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=dim) * 5.0


CONFIG = cascade.CascadeConfig(num_stages=2, crop_size=CROP)
_align_crops = jax.jit(cascade.align_crops, static_argnames=("config", "remat"))
_run_cascade = jax.jit(cascade.run_cascade, static_argnames=("config", "remat"))
_project = jax.jit(cascade.project_landmarks)


# ----------------------------------------------------------------------------------------------
# One stage
# ----------------------------------------------------------------------------------------------


def test_stage_with_exact_inverse_regressors_recovers_truth():
  """Regressors solved exactly (ridge, lambda ~ 0) from the initial features to the residuals
  move the landmarks and the pose onto the truth; the shape fit then finds the true shape."""
  am = small_alignment_model()
  config = cascade.CascadeConfig(num_stages=1, crop_size=CROP, shape_regularisation=1e-6)
  rng = np.random.default_rng(0)
  num_faces = 4
  params = zero_params(1, DIM)
  start = cascade.initial_state(am, params, config)
  poses = np.tile(params.initial_pose, (num_faces, 1))
  poses[:, 0] *= rng.uniform(0.95, 1.05, num_faces)
  poses[:, 1:4] += np.radians(rng.uniform(-8, 8, (num_faces, 3)))
  poses[:, 4:6] += rng.uniform(-2, 2, (num_faces, 2))
  shapes = rng.normal(size=(num_faces, 6)).astype(np.float32)
  expressions = rng.uniform(0, 0.3, (num_faces, 4)).astype(np.float32)
  truth, _, _ = jax.vmap(_project, (None, 0, 0, 0))(am, jnp.asarray(poses), shapes, expressions)

  maps = smooth_maps(jax.random.key(1), num_faces)
  features = np.asarray(jax.vmap(cascade.stage_features, (0, None, None))(
      maps, start.landmarks_px, start.visibility), np.float64)
  gram = features.T @ features
  landmark_residual = np.asarray(truth - start.landmarks_px, np.float64).reshape(num_faces, -1)
  pose_residual = (poses - np.asarray(start.pose)) / np.asarray(params.pose_std[0])
  stage = (jnp.asarray(regression.ridge_solve(gram, features.T @ landmark_residual, 1e-8)),
           jnp.asarray(regression.ridge_solve(gram, features.T @ pose_residual, 1e-8)),
           params.pose_std[0])

  apply = jax.jit(jax.vmap(
      lambda stage, state, descriptor_map: cascade.apply_stage(am, stage, state, descriptor_map,
                                                               config), (None, None, 0)))
  next_state, regressed = apply(stage, start, maps)
  np.testing.assert_allclose(regressed, truth, atol=2e-3)
  np.testing.assert_allclose(next_state.pose, poses, atol=1e-4)
  np.testing.assert_allclose(next_state.landmarks_px, truth, atol=2e-2)
  np.testing.assert_allclose(next_state.shape_coefficients, shapes, atol=0.05)
  np.testing.assert_allclose(next_state.expression_coefficients, expressions, atol=0.05)


def test_fit_shape_rows_matches_fitting_fit_shape_linear():
  """The cascade's shape fit on pre-gathered rows equals the foundation's fit_shape_linear."""
  am = small_alignment_model()
  model = small_face_model()
  pose = jnp.asarray(centred_pose(35.0))
  rotation = cascade.pose_rotation(pose)
  ids = jnp.asarray(cascade.project_landmarks(am, pose, jnp.zeros(6), jnp.zeros(4))[2])
  landmarks = cascade.project_landmarks(am, pose, jnp.zeros(6), jnp.zeros(4))[0]
  landmarks = landmarks + jax.random.normal(jax.random.key(20), landmarks.shape)
  weights = jnp.ones(68).at[40:48].set(0.0)
  mean, basis = cascade.landmark_rows(am, ids)
  np.testing.assert_allclose(mean, np.asarray(model.mean_vertices)[np.asarray(ids)], atol=1e-6)
  rows = jax.jit(cascade.fit_shape_rows)(am, mean, basis, landmarks, pose, rotation, weights,
                                         3.0)
  shape, expression = fitting.fit_shape_linear(
      model, landmarks, pose[0], rotation, pose[4:6], vertex_ids=ids, weights=weights,
      regularisation=3.0)
  np.testing.assert_allclose(rows, jnp.concatenate([shape, expression]), atol=1e-4, rtol=1e-4)
  assert float(jnp.abs(rows).max()) > 0.05  # The noise really moved the shape.


def test_shape_fit_recovers_planted_coefficients_and_has_true_gradients():
  """Landmarks made from known coefficients (full default model, 113 of them) under a turned pose:
  the normal equations + Cholesky solve give those coefficients back (tiny regularisation), and
  the fit's gradients with respect to the landmarks and the pose pass check_grads."""
  am = cascade.make_alignment_model(load_face_model("default"))
  model = am.face_model
  pose = jnp.asarray(centred_pose(30.0, crop_size=128))
  rotation = cascade.pose_rotation(pose)
  rng = np.random.default_rng(3)
  truth = jnp.asarray(np.concatenate([
      rng.normal(size=model.num_identity) * 0.8,
      rng.normal(size=model.num_expression) * 0.3 * np.asarray(model.expression_std)]),
                      jnp.float32)
  ids = cascade.project_landmarks(am, pose, truth[:model.num_identity],
                                  truth[model.num_identity:])[2]
  mean, basis = cascade.landmark_rows(am, ids)
  points = mean + jnp.einsum("njk,k->nj", basis, truth, precision="highest")
  landmarks = geometry.weak_perspective_project(points, pose[0], rotation, pose[4:6])
  weights = jnp.ones(68)
  matrix, rhs = cascade.shape_normal_equations(am, mean, basis, landmarks, pose, rotation,
                                               weights, 1e-6)
  solved = cascade.solve_normal_equations(matrix, rhs)
  # The reprojection is exact; coefficients the 68 points barely see may drift, so compare the
  # fitted landmarks (to 0.01 px) and the well-determined leading identity modes.
  refitted = geometry.weak_perspective_project(
      mean + jnp.einsum("njk,k->nj", basis, solved, precision="highest"), pose[0], rotation,
      pose[4:6])
  np.testing.assert_allclose(np.asarray(refitted), np.asarray(landmarks), atol=1e-2)
  np.testing.assert_allclose(np.asarray(solved[:5]), np.asarray(truth[:5]), atol=0.05)
  np.testing.assert_allclose(np.asarray(matrix), np.asarray(matrix).T, rtol=1e-5, atol=1e-3)

  def fit(landmarks_, pose_):
    return jnp.sum(cascade.fit_shape_rows(am, mean, basis, landmarks_, pose_,
                                          cascade.pose_rotation(pose_), weights, 10.0)[:8])

  check_grads(fit, (landmarks, pose), order=1, modes=("rev",), atol=5e-2, rtol=5e-2, eps=1e-2)


def test_hidden_layer_planted_step_and_no_op_start(tmp_path):
  """Planted: a hidden unit fed only by the constant feature (pre-activation 1) with output
  weights 2 / gelu(1) on every landmark's x and 1 / gelu(1) on the pose's tx moves every
  landmark by exactly 2 px right and the pose by one ``pose_std`` in tx. A freshly added layer
  (zero output weights) changes nothing; the file keeps it."""
  from dff_jax.alignment import io as cascade_io  # pylint: disable=g-import-not-at-top
  am = small_alignment_model()
  linear = random_params(2, DIM, jax.random.key(11))
  params = cascade.add_hidden_layer(linear, 3, jax.random.key(12))
  assert params.hidden_units == 3 and len(params.stages()) == 5
  descriptor_map = smooth_maps(jax.random.key(13), 1)[0]
  plain, _ = _run_cascade(am, linear, descriptor_map, CONFIG)
  added, _ = _run_cascade(am, params, descriptor_map, CONFIG)
  for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(added)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="already has a hidden layer"):
    cascade.add_hidden_layer(params, 3, jax.random.key(0))

  feature_dim = 68 * DIM + 1
  gelu_1 = 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (1.0 + 0.044715)))  # tanh form, x = 1
  hidden = np.zeros((feature_dim, 3), np.float32)
  hidden[-1, 0] = 1.0                                   # the constant feature
  output = np.zeros((3, 142), np.float32)
  output[0, 0:136:2] = 2.0 / gelu_1                      # every landmark's x
  output[0, 136 + 4] = 1.0 / gelu_1                      # the pose's tx (units of pose_std)
  pose_std = np.array([0.002, 0.02, 0.02, 0.02, 0.3, 0.3], np.float32)
  stage = (jnp.zeros((feature_dim, 136)), jnp.zeros((feature_dim, 6)), jnp.asarray(pose_std),
           jnp.asarray(hidden), jnp.asarray(output))
  start = cascade.initial_state(am, linear, CONFIG)
  features = cascade.stage_features(descriptor_map, start.landmarks_px, start.visibility)
  landmarks, pose = cascade.regress(stage, start, features)
  np.testing.assert_allclose(landmarks - start.landmarks_px,
                             np.broadcast_to([2.0, 0.0], (68, 2)), atol=1e-4)
  np.testing.assert_allclose(pose - start.pose, pose_std * np.eye(6)[4], atol=1e-5)

  trained = params.replace(output_weights=params.output_weights + 0.01)
  path = cascade_io.save_cascade(tmp_path / "hidden.npz", trained, CONFIG,
                                 dict(features="dff", face_model="default"), compact=False)
  loaded, _, _ = cascade_io.load_cascade(path)
  np.testing.assert_array_equal(loaded.hidden_weights, trained.hidden_weights)
  np.testing.assert_array_equal(loaded.output_weights, trained.output_weights)
  compact = cascade_io.save_cascade(tmp_path / "compact.npz", trained, CONFIG,
                                    dict(features="dff", face_model="default"))
  np.testing.assert_allclose(cascade_io.load_cascade(compact)[0].hidden_weights,
                             trained.hidden_weights, rtol=1e-3, atol=1e-4)
  broken = trained.replace(output_weights=trained.output_weights[:, :, :140])
  path = cascade_io.save_cascade(tmp_path / "broken.npz", broken, CONFIG,
                                 dict(features="dff", face_model="default"), compact=False)
  with pytest.raises(ValueError, match="inconsistent cascade arrays"):
    cascade_io.load_cascade(path)
  # Truncating keeps the hidden layer's stages in step.
  first = regression.truncate(trained, 1)
  assert first.hidden_weights.shape[0] == first.output_weights.shape[0] == 1


def test_stage_features_layout_and_masking():
  descriptor_map = smooth_maps(jax.random.key(2), 1)[0]
  landmarks = jnp.tile(jnp.asarray([[5.5, 7.5]]), (68, 1)).at[3].set(jnp.asarray([-4.0, 5.0]))
  visibility = jnp.ones((68,)).at[10].set(0.0)
  features = cascade.stage_features(descriptor_map, landmarks, visibility)
  assert features.shape == (68 * DIM + 1,)
  per_landmark = features[:-1].reshape(68, DIM)
  np.testing.assert_allclose(per_landmark[0], descriptor_map[7, 5], atol=1e-6)  # Pixel centre.
  np.testing.assert_array_equal(per_landmark[3], 0.0)  # Outside the crop.
  np.testing.assert_array_equal(per_landmark[10], 0.0)  # Invisible.
  assert float(features[-1]) == 1.0


# ----------------------------------------------------------------------------------------------
# The cascade: jit, vmap, remat, gradients
# ----------------------------------------------------------------------------------------------


def test_jit_matches_eager_and_remat():
  am = small_alignment_model()
  params = random_params(2, DIM, jax.random.key(3))
  descriptor_map = smooth_maps(jax.random.key(4), 1)[0]
  eager_final, eager_stages = cascade.run_cascade(am, params, descriptor_map, CONFIG)
  jit_final, jit_stages = _run_cascade(am, params, descriptor_map, CONFIG)
  remat_final, _ = _run_cascade(am, params, descriptor_map, CONFIG, remat=True)
  assert eager_stages.landmarks_px.shape == (2, 68, 2)
  assert eager_stages.pose.shape == (2, 6)
  for a, b, c in zip(jax.tree_util.tree_leaves(eager_final), jax.tree_util.tree_leaves(jit_final),
                     jax.tree_util.tree_leaves(remat_final)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(b, c, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(eager_stages.landmarks_px, jit_stages.landmarks_px, atol=1e-4)
  # The random regressors really moved the face (the test is not about a fixed point).
  start = cascade.initial_state(am, params, CONFIG)
  assert float(jnp.abs(jit_final.landmarks_px - start.landmarks_px).max()) > 0.2


def test_vmap_over_batch_matches_python_loop():
  am = small_alignment_model()
  params = random_params(2, DIM, jax.random.key(5))
  maps = smooth_maps(jax.random.key(6), 3)
  batched = _align_crops(am, params, maps, CONFIG)
  for b in range(3):
    single, _ = _run_cascade(am, params, maps[b], CONFIG)
    for a, c in zip(jax.tree_util.tree_leaves(single), jax.tree_util.tree_leaves(batched)):
      np.testing.assert_allclose(a, c[b], atol=1e-4, rtol=1e-4)


def test_gradients_match_finite_differences():
  """Reverse-mode gradients through a 2-stage cascade w.r.t. the descriptor map and the
  regressors agree with finite differences (float32, loose tolerance)."""
  am = small_alignment_model()
  params = random_params(2, DIM, jax.random.key(7), yaw_deg=15.0)
  descriptor_map = smooth_maps(jax.random.key(8), 1)[0]

  def final(descriptor_map, landmark_weights, pose_weights):
    p = params.replace(landmark_weights=landmark_weights, pose_weights=pose_weights)
    state, _ = cascade.run_cascade(am, p, descriptor_map, CONFIG)
    return state.landmarks_px, state.pose, state.shape_coefficients

  # A scalar loss: reverse-mode directional derivatives against central differences along
  # random directions. (jax.test_util.check_grads at eps 1e-4 was dominated by float32 rounding
  # of the ~50 px outputs, about 50 * 6e-8 / 1e-4 per output before its random cotangent sums
  # them, and failed on one CPU and passed on another; these loss weights keep every term's
  # derivative well above that noise.)
  args = (descriptor_map, params.landmark_weights, params.pose_weights)

  def loss(*args):
    landmarks, pose, shape = final(*args)
    return jnp.sum(landmarks * jnp.linspace(-1.0, 1.0, 136).reshape(68, 2)) + jnp.sum(
        pose * jnp.asarray([100.0, 10.0, 10.0, 10.0, 1.0, 1.0])) + jnp.sum(shape)

  loss = jax.jit(loss)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)
  assert float(jnp.abs(grads[0]).max()) > 1e-3  # Not trivially zero.
  for seed in range(4):
    keys = jax.random.split(jax.random.key(100 + seed), 3)
    direction = [jax.random.normal(k, a.shape) for k, a in zip(keys, args)]
    eps = 1e-3
    plus = loss(*[a + eps * d for a, d in zip(args, direction)])
    minus = loss(*[a - eps * d for a, d in zip(args, direction)])
    numeric = float(plus - minus) / (2 * eps)
    analytic = sum(float(jnp.vdot(g, d)) for g, d in zip(grads, direction))
    np.testing.assert_allclose(analytic, numeric, rtol=0.05, atol=0.05)


def test_gradients_finite_at_profile_and_boxes_outside_image():
  """align_images with dense SIFT descriptors: finite gradients w.r.t. the images and all
  regressors at 90 degrees yaw, with one box partly outside the image."""
  am = small_alignment_model()
  params = random_params(2, sift.DESCRIPTOR_DIM, jax.random.key(9), yaw_deg=90.0)
  images = jax.random.uniform(jax.random.key(10), (2, 40, 40, 3), maxval=255.0)
  boxes = jnp.asarray([[8.0, 8.0, 32.0, 32.0], [-12.0, 20.0, 18.0, 52.0]])
  describe = functools.partial(sift.dense_sift, cell_px=2)

  def loss(images, params):
    result = cascade.align_images(describe, am, params, images, boxes, CONFIG)
    return (jnp.sum(result.landmarks_px) + jnp.sum(result.yaw_rad) + jnp.sum(result.scale)
            + jnp.sum(result.shape_coefficients))

  value, (grad_images, grad_params) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
      images, params)
  assert bool(jnp.isfinite(value))
  for leaf in [grad_images] + jax.tree_util.tree_leaves(grad_params):
    assert bool(jnp.all(jnp.isfinite(leaf)))
  assert float(jnp.abs(grad_images).max()) > 0.0
  assert float(jnp.abs(grad_params.landmark_weights).max()) > 0.0


# ----------------------------------------------------------------------------------------------
# Contour landmarks and visibility
# ----------------------------------------------------------------------------------------------


def _jaw_and_visibility(yaw_deg):
  am = small_alignment_model()
  pose = jnp.asarray(centred_pose(yaw_deg))
  _, visibility, ids = _project(am, pose, jnp.zeros(6), jnp.zeros(4))
  return np.asarray(ids), np.asarray(visibility)


def test_contour_landmarks_follow_the_silhouette_past_45_degrees():
  frontal = np.asarray(small_face_model().landmark_vertex_ids)
  ids, _ = _jaw_and_visibility(0.0)
  np.testing.assert_array_equal(ids, frontal)
  # Positive yaw turns the subject's left side (jaw 9-16) away from the camera.
  ids, visibility = _jaw_and_visibility(60.0)
  np.testing.assert_array_equal(ids[:9], frontal[:9])
  assert np.all(ids[9:17] != frontal[9:17]), ids[9:17]
  np.testing.assert_array_equal(ids[17:], frontal[17:])
  assert np.all(visibility[9:17] == 1.0)  # Silhouette points are visible by construction.
  ids, _ = _jaw_and_visibility(-60.0)
  np.testing.assert_array_equal(ids[8:], frontal[8:])
  assert np.all(ids[:8] != frontal[:8]), ids[:8]


def test_silhouette_jaw_is_outermost_in_the_image():
  """At 60 degrees the far-side jaw points lie on the outline: further out than the frontal
  jaw vertices would project."""
  am = small_alignment_model()
  pose = jnp.asarray(centred_pose(60.0))
  landmarks, _, _ = _project(am, pose, jnp.zeros(6), jnp.zeros(4))
  model = small_face_model()
  frontal_points = np.asarray(model.mean_vertices)[np.asarray(model.landmark_vertex_ids)[9:17]]
  frontal_px = geometry.weak_perspective_project(
      jnp.asarray(frontal_points), pose[0], cascade.pose_rotation(pose), pose[4:6])
  # Positive yaw: the subject's left cheek (image right) turns away; its outline is further right.
  assert np.all(np.asarray(landmarks[9:17, 0]) >= frontal_px[:, 0] - 1e-4)
  assert np.mean(np.asarray(landmarks[9:17, 0]) > frontal_px[:, 0] + 0.05) > 0.5


@pytest.mark.parametrize("yaw_deg,near,far", [(80.0, RIGHT_EYE, LEFT_EYE),
                                              (-80.0, LEFT_EYE, RIGHT_EYE)])
def test_far_eye_invisible_at_80_degrees(yaw_deg, near, far):
  _, visibility = _jaw_and_visibility(yaw_deg)
  np.testing.assert_array_equal(visibility[far], 0.0)
  np.testing.assert_array_equal(visibility[near], 1.0)
  _, frontal_visibility = _jaw_and_visibility(0.0)
  np.testing.assert_array_equal(frontal_visibility, 1.0)


# ----------------------------------------------------------------------------------------------
# Sharding
# ----------------------------------------------------------------------------------------------

_SHARDING_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import test_cascade as t
    from dff_jax.alignment import cascade
    assert jax.device_count() == 8, jax.devices()
    am = t.small_alignment_model()
    params = t.random_params(2, t.DIM, jax.random.key(11))
    maps = t.smooth_maps(jax.random.key(12), 8)
    single = t._align_crops(am, params, jax.device_put(maps, jax.devices()[0]), t.CONFIG)
    # Auto axes, as dff_jax.train uses (explicit-sharding mode is not supported by the cascade:
    # the contour gather in face_model.model cannot resolve its output sharding).
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded_maps = jax.device_put(maps, NamedSharding(mesh, P("data")))
    sharded = t._align_crops(am, params, sharded_maps, t.CONFIG)
    assert len(sharded.landmarks_px.sharding.device_set) == 8, sharded.landmarks_px.sharding
    for a, b in zip(jax.tree_util.tree_leaves(single), jax.tree_util.tree_leaves(sharded)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-4)
    print("SHARDING_OK")
""")


def test_sharded_batch_on_8_devices_matches_one_device():
  env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=8"),
             JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
  result = subprocess.run([sys.executable, "-c", _SHARDING_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "SHARDING_OK" in result.stdout


# ----------------------------------------------------------------------------------------------
# Images in, results out
# ----------------------------------------------------------------------------------------------


def _fixed_conv_describe(crops):
  """A fixed random 3x3 convolution ``[B, c, c, 3] -> [B, c, c, DIM]`` (a stand-in encoder)."""
  kernel = jax.random.normal(jax.random.key(13), (3, 3, 3, DIM)) / 255.0
  return jax.lax.conv_general_dilated(crops, kernel, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


_align_images = jax.jit(cascade.align_images, static_argnames=("describe", "config", "remat"))


def test_align_images_with_zero_regressors_returns_initial_state_in_image_pixels():
  am = small_alignment_model()
  params = zero_params(2, DIM)
  images = jax.random.uniform(jax.random.key(14), (3, 50, 60, 3), maxval=255.0)
  boxes = jnp.asarray([[10.0, 12.0, 40.0, 40.0],   # 30 x 28, squared to 37.5 x 37.5.
                       [20.0, 12.0, 50.0, 40.0],   # The same box moved by 10 px right.
                       [5.0, -6.0, 65.0, 50.0]])   # Larger than the image.
  result = _align_images(_fixed_conv_describe, am, params, images, boxes, CONFIG)
  start = cascade.initial_state(am, params, CONFIG)
  crop_boxes = geometry.square_box(boxes, CONFIG.box_scale)
  np.testing.assert_allclose(result.crop_box, crop_boxes, atol=1e-5)
  side = np.asarray(crop_boxes[:, 2] - crop_boxes[:, 0])
  expected = (np.asarray(start.landmarks_px)[None] * (side / CROP)[:, None, None]
              + np.asarray(crop_boxes)[:, None, :2])
  np.testing.assert_allclose(result.landmarks_px, expected, atol=2e-3)
  np.testing.assert_allclose(result.scale, start.pose[0] * side / CROP, rtol=1e-5)
  np.testing.assert_allclose(result.translation_px,
                             start.pose[4:6] * (side / CROP)[:, None] + crop_boxes[:, :2],
                             atol=2e-3)
  np.testing.assert_allclose(result.yaw_rad, start.pose[2], atol=1e-6)
  np.testing.assert_allclose(result.shape_coefficients, 0.0, atol=1e-3)
  np.testing.assert_array_equal(result.visibility, np.tile(start.visibility, (3, 1)))
  # Landmarks move with the box: boxes 0 and 1 differ by a shift of their centre only.
  shift = np.asarray((crop_boxes[1] - crop_boxes[0])[:2])
  np.testing.assert_allclose(result.landmarks_px[1] - result.landmarks_px[0],
                             np.broadcast_to(shift, (68, 2)), atol=2e-3)
  # The mean-face landmarks project through the reported pose.
  model = small_face_model()
  points = np.asarray(model.mean_vertices)[np.asarray(model.landmark_vertex_ids)]
  reprojected = geometry.weak_perspective_project(
      points, np.asarray(result.scale), np.asarray(geometry.euler_to_matrix(
          result.pitch_rad, result.yaw_rad, result.roll_rad)), np.asarray(result.translation_px))
  np.testing.assert_allclose(reprojected, result.landmarks_px, atol=2e-3)


def test_align_images_is_translation_equivariant():
  """With real (random) regressors, moving the image content and the box together by an
  integer shift moves every output landmark by exactly that shift (crop and uncrop agree)."""
  am = small_alignment_model()
  params = random_params(2, DIM, jax.random.key(15))
  big = np.asarray(jax.random.uniform(jax.random.key(16), (70, 70, 3), maxval=255.0))
  dx, dy = 7, 4
  images = np.stack([big[10:58, 10:58], big[10 + dy:58 + dy, 10 + dx:58 + dx]])
  box = np.array([12.0, 10.0, 36.0, 34.0], np.float32)  # 24 px -> 30 px crop box at 1.25.
  boxes = np.stack([box, box - np.array([dx, dy, dx, dy], np.float32)])
  result = _align_images(_fixed_conv_describe, am, params, images, boxes, CONFIG)
  np.testing.assert_allclose(result.landmarks_px[1] + np.array([dx, dy]), result.landmarks_px[0],
                             atol=2e-3)
  np.testing.assert_allclose(result.yaw_rad[1], result.yaw_rad[0], atol=1e-5)
  start = cascade.initial_state(am, params, CONFIG)
  crop_landmarks = geometry.image_to_crop(result.landmarks_px[0], result.crop_box[0], CROP)
  assert float(jnp.abs(crop_landmarks - start.landmarks_px).max()) > 0.5  # Regressors acted.


def test_map_in_chunks_gives_the_whole_batch_answer():
  """``map_in_chunks`` calls ``describe`` on ``chunk`` crops at a time when ``chunk``
  divides the batch (else on the whole batch) and returns what one call on all crops returns,
  for a pytree of outputs of different ranks."""
  crops = jax.random.uniform(jax.random.key(21), (8, 6, 6, 3), maxval=255.0)
  seen = []

  def describe(batch):
    seen.append(batch.shape[0])
    return {"map": jnp.tanh(batch / 100.0) * 2.0, "mean": batch.mean(axis=(1, 2))}

  expected = describe(crops)
  for chunk, calls in ((4, 4), (2, 2), (3, 8), (0, 8), (8, 8), (16, 8)):
    seen.clear()
    got = cascade.map_in_chunks(describe, crops, chunk)
    assert seen == [calls], (chunk, seen)
    assert got["map"].shape == (8, 6, 6, 3) and got["mean"].shape == (8, 3)
    for key in expected:
      np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, err_msg=f"{key} {chunk}")


def test_working_images_to_crops_is_the_block_mean():
  """Pixel (i, j) of a working image holds 10 i + j (+ 100 c in channel c): crop pixel (I, J) of
  an m-times larger image is the mean over its m x m block, 10 (m I + (m - 1) / 2) +
  (m J + (m - 1) / 2) (+ 100 c), for m = 1, 2, 3; a side that is not a multiple is refused."""
  crop = 5
  for m in (1, 2, 3):
    side = m * crop
    i, j = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    image = (10.0 * i + j)[None, :, :, None] + 100.0 * np.arange(3)
    got = np.asarray(cascade.working_images_to_crops(jnp.asarray(image, jnp.float32), crop))
    big_i, big_j = np.meshgrid(np.arange(crop), np.arange(crop), indexing="ij")
    want = (10.0 * (m * big_i + (m - 1) / 2) + (m * big_j + (m - 1) / 2))[None, :, :, None]
    np.testing.assert_allclose(got, want + 100.0 * np.arange(3), atol=1e-4, err_msg=str(m))
  with pytest.raises(ValueError, match="multiple of the crop size 5"):
    cascade.working_images_to_crops(jnp.zeros((1, 12, 12, 3)), crop)


def test_align_working_images_returns_the_planted_start_in_working_pixels():
  """Zero regressors and a planted 30-degree starting pose: align_working_images on 2x-size
  working images returns the starting landmarks, pose and crop box scaled by 2 (working pixels),
  whatever the chunk."""
  am = small_alignment_model()
  params = zero_params(2, DIM, yaw_deg=30.0)
  start = cascade.initial_state(am, params, CONFIG)
  images = jax.random.uniform(jax.random.key(23), (4, 2 * CROP, 2 * CROP, 3), maxval=255.0)
  for chunk in (0, 2):
    result = jax.jit(cascade.align_working_images, static_argnums=(0, 4),
                     static_argnames="chunk")(_fixed_conv_describe, am, params, images, CONFIG,
                                              chunk=chunk)
    np.testing.assert_allclose(result.landmarks_px, np.broadcast_to(
        2.0 * np.asarray(start.landmarks_px), (4, 68, 2)), atol=1e-3)
    np.testing.assert_allclose(result.crop_box, np.tile([[0, 0, 2 * CROP, 2 * CROP]], (4, 1)))
    np.testing.assert_allclose(result.yaw_rad, np.full(4, np.deg2rad(30.0)), atol=1e-6)
    np.testing.assert_allclose(result.scale, np.full(4, 2.0 * float(start.pose[0])), rtol=1e-6)


def test_default_chunk_is_eight_crops_on_cpu_and_the_whole_batch_on_accelerators(monkeypatch):
  """chunk=None: fn sees 8 of 16 items per step on a CPU backend, all 16 at once on GPU / TPU;
  same values either way."""
  xs = jnp.arange(16.0 * 3).reshape(16, 3)
  for backend, expected in (("cpu", 8), ("gpu", 16), ("tpu", 16)):
    monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
    seen = []

    def fn(part):
      seen.append(part.shape[0])
      return part * 2.0
    assert cascade.default_chunk() == (cascade.CPU_CHUNK if backend == "cpu" else 0)
    np.testing.assert_allclose(cascade.map_in_chunks(fn, xs, None), 2.0 * xs)
    assert seen == [expected], (backend, seen)


def test_align_images_integer_boxes_and_uint8_images_and_3d_landmarks():
  """Integer boxes and uint8 images give the float answer; at a 60-degree starting yaw the
  3D-jaw landmarks are the fixed landmark vertices (not the silhouette jaw of landmarks_px)."""
  am = small_alignment_model()
  params = zero_params(2, DIM, yaw_deg=60.0)
  images = np.asarray(jax.random.uniform(jax.random.key(22), (2, 40, 44, 3), maxval=255.0))
  images = np.round(images).astype(np.uint8)
  boxes = np.array([[6, 5, 31, 30], [9, 8, 37, 36]], np.int32)
  as_int = _align_images(_fixed_conv_describe, am, params, images, boxes, CONFIG)
  as_float = _align_images(_fixed_conv_describe, am, params, images.astype(np.float32),
                           boxes.astype(np.float32), CONFIG)
  for field in ("landmarks_px", "landmarks_3d_px", "crop_box"):
    np.testing.assert_allclose(getattr(as_int, field), getattr(as_float, field), atol=1e-4,
                               err_msg=field)
  start = cascade.initial_state(am, params, CONFIG)
  fixed = cascade.fixed_landmarks(am, start.pose, start.shape_coefficients,
                                  start.expression_coefficients)
  side = np.asarray(as_int.crop_box[:, 2] - as_int.crop_box[:, 0])
  expected = (np.asarray(fixed)[None] * (side / CROP)[:, None, None]
              + np.asarray(as_int.crop_box)[:, None, :2])
  np.testing.assert_allclose(as_int.landmarks_3d_px, expected, atol=2e-3)
  jaw_gap = np.abs(np.asarray(as_int.landmarks_3d_px - as_int.landmarks_px)[:, :17]).max()
  assert jaw_gap > 0.5   # the silhouette jaw and the fixed jaw differ at 60 degrees
  np.testing.assert_allclose(as_int.landmarks_3d_px[:, 17:], as_int.landmarks_px[:, 17:],
                             atol=1e-4)


def _sphere_model(radius=60.0, rings=24, segments=48, skin_below_z=None):
  """A UV sphere as a FaceModel (outward triangles); landmark and contour-candidate vertices
  spread over it. ``skin_below_z``: vertices above that z are eyeball (not skin)."""
  theta = np.linspace(0, np.pi, rings + 1)[1:-1]
  phi = np.linspace(0, 2 * np.pi, segments, endpoint=False)
  t, p = np.meshgrid(theta, phi, indexing="ij")
  points = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1).reshape(-1, 3)
  points = np.concatenate([points, [[0, 0, 1], [0, 0, -1]]]) * radius
  north, south = len(points) - 2, len(points) - 1
  index = np.arange((rings - 1) * segments).reshape(rings - 1, segments)
  triangles = []
  for i in range(rings - 2):
    for j in range(segments):
      a, b = index[i, j], index[i, (j + 1) % segments]
      c, d = index[i + 1, j], index[i + 1, (j + 1) % segments]
      triangles += [(a, c, b), (b, c, d)]
  for j in range(segments):
    triangles += [(north, index[0, j], index[0, (j + 1) % segments]),
                  (south, index[-1, (j + 1) % segments], index[-1, j])]
  triangles = np.asarray(triangles, np.int32)
  v = points[triangles]
  outward = np.einsum("tj,tj->t", np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), v.mean(1))
  triangles[outward < 0] = triangles[outward < 0][:, ::-1]
  num = len(points)
  part = np.zeros(num, np.int32)
  if skin_below_z is not None:
    part[points[:, 2] > skin_below_z] = face_model_lib.PART_EYEBALL_LEFT
  rng = np.random.default_rng(0)
  band = np.flatnonzero(np.abs(points[:, 2]) < 0.8 * radius)   # away from the poles' fans
  landmarks = rng.choice(band, 68, replace=False).astype(np.int32)
  candidates = rng.choice(band, (17, 6)).astype(np.int32)
  candidates[:, 0] = landmarks[:17]
  return face_model_lib.FaceModel(
      mean_vertices=points.astype(np.float32),
      identity_basis=np.zeros((1, num, 3), np.float32),
      expression_basis=np.zeros((1, num, 3), np.float32), expression_std=np.ones(1, np.float32),
      triangles=triangles, vertex_part=part, landmark_vertex_ids=landmarks,
      landmark_3d_vertex_ids=landmarks,
      contour_candidates=candidates, albedo_mean=np.full((num, 3), 0.5, np.float32),
      albedo_basis=np.zeros((1, num, 3), np.float32), name="sphere", expression_names=("e",))


def test_alignment_model_normals_of_a_sphere_are_radial():
  """On a sphere every smoothed normal (mesh rounds and the Gaussian window of the landmark
  vertices) is the outward radius, unit length."""
  model = _sphere_model()
  normals = np.asarray(cascade.make_alignment_model(model).normals)
  radial = model.mean_vertices / np.linalg.norm(model.mean_vertices, axis=1, keepdims=True)
  np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
  ids = np.unique(np.concatenate([model.landmark_vertex_ids, model.contour_candidates.ravel()]))
  assert len(ids) > 128   # several chunks of 64
  np.testing.assert_allclose(normals[ids], radial[ids], atol=6e-3)
  band = np.abs(radial[:, 2]) < 0.8   # (the UV triangulation twists mesh normals by ~0.01)
  np.testing.assert_allclose(normals[band], radial[band], atol=1.2e-2)


def test_alignment_model_landmark_normals_average_only_skin():
  """With the top cap marked eyeball, a landmark vertex's normal is the normalised Gaussian-
  weighted sum (sigma 8 mm) of the skin vertices' area-weighted normals, computed here by brute
  force; the other vertices keep mesh-smoothed radial normals."""
  model = _sphere_model(skin_below_z=30.0)
  normals = np.asarray(cascade.make_alignment_model(model).normals)   # default: 8 mm
  v = model.mean_vertices.astype(np.float64)
  tri = model.triangles
  area_normals = np.zeros_like(v)
  face = np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]])
  for k in range(3):
    np.add.at(area_normals, tri[:, k], face)
  skin = model.vertex_part == face_model_lib.PART_FACE
  ids = np.unique(np.concatenate([model.landmark_vertex_ids, model.contour_candidates.ravel()]))
  for i in ids:
    weight = np.exp(-0.5 * np.sum((v[skin] - v[i]) ** 2, axis=1) / 8.0**2)
    expected = weight @ area_normals[skin]
    np.testing.assert_allclose(normals[i], expected / np.linalg.norm(expected), atol=1e-5,
                               err_msg=str(i))
  # A 0.9 mm window: vertices on skin keep (about) their own area normal; in the cap, far from
  # any skin vertex, the window's sum underflows and the mesh-smoothed normal is kept.
  narrow = np.asarray(cascade.make_alignment_model(model, smoothing_sigma_mm=0.9).normals)
  kept = 0
  for i in ids:
    expected = np.exp(-0.5 * np.sum((v[skin] - v[i]) ** 2, axis=1) / 0.9**2) @ area_normals[skin]
    if np.linalg.norm(expected) > 1e-12:
      np.testing.assert_allclose(narrow[i], expected / np.linalg.norm(expected), atol=1e-5)
    else:
      kept += 1
      np.testing.assert_allclose(narrow[i], v[i] / np.linalg.norm(v[i]), atol=1.2e-2)
  assert kept > 0
  # Near the cap's edge the window is lopsided: normals tilt away from the cap.
  edge = [i for i in ids if 20.0 < v[i, 2] < 30.0]
  assert edge and all(normals[i, 2] < v[i, 2] / 60.0 - 0.02 for i in edge)
  radial = v / np.linalg.norm(v, axis=1, keepdims=True)
  others = np.setdiff1d(np.flatnonzero(np.abs(radial[:, 2]) < 0.8), ids)
  np.testing.assert_allclose(normals[others], radial[others], atol=1.2e-2)
  # sigma 0: no window; every vertex keeps the mesh-smoothed normal.
  plain = np.asarray(cascade.make_alignment_model(model, smoothing_sigma_mm=0.0).normals)
  np.testing.assert_allclose(plain[ids], radial[ids], atol=1.2e-2)
