"""Tests for dff_jax.geometry: conventions, round trips, NumPy/JAX parity, jit, vmap, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from dff_jax import geometry

NOSE_MM = np.array([[0.0, 0.0, 100.0]])


def _random_angles(rng, shape, max_yaw=1.5):
  pitch = rng.uniform(-np.pi + 0.01, np.pi - 0.01, shape)
  yaw = rng.uniform(-max_yaw, max_yaw, shape)
  roll = rng.uniform(-np.pi + 0.01, np.pi - 0.01, shape)
  return pitch, yaw, roll


def _random_similarity(rng, d):
  """Random (s, R, t) with det R = +1 in d = 2 or 3 dimensions."""
  if d == 2:
    angle = rng.uniform(-np.pi, np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  else:
    rotation = geometry.euler_to_matrix(*_random_angles(rng, ()))
  return rng.uniform(0.5, 3.0), rotation, rng.normal(0, 10, d)


# ----------------------------------------------------------------------------------------------
# Sign conventions (DESIGN.md section 3)
# ----------------------------------------------------------------------------------------------


def _project_nose(pitch=0.0, yaw=0.0, roll=0.0):
  rotation = geometry.euler_to_matrix(pitch, yaw, roll)
  return geometry.weak_perspective_project(NOSE_MM, 1.0, rotation, np.array([50.0, 50.0]))[0]


def test_frontal_nose_projects_to_translation():
  np.testing.assert_allclose(_project_nose(), [50.0, 50.0], atol=1e-12)


def test_positive_yaw_moves_nose_to_image_right():
  x, y = _project_nose(yaw=0.3)
  assert x > 50.0 + 25.0
  np.testing.assert_allclose(y, 50.0, atol=1e-9)


def test_positive_pitch_moves_nose_down_in_image():
  x, y = _project_nose(pitch=0.3)
  assert y > 50.0 + 25.0  # image y grows downwards.
  np.testing.assert_allclose(x, 50.0, atol=1e-9)


def test_positive_roll_turns_subject_left_side_up():
  # The subject's left is model +x (viewer's right); positive roll lifts it: image y decreases.
  rotation = geometry.euler_to_matrix(0.0, 0.0, 0.3)
  left_cheek = np.array([[60.0, 0.0, 0.0]])
  x, y = geometry.weak_perspective_project(left_cheek, 1.0, rotation, np.zeros(2))[0]
  assert x > 0 and y < -10.0


def test_y_flip_model_up_is_image_up():
  rotation = np.eye(3)
  points = np.array([[10.0, 20.0, 5.0]])
  projected = geometry.weak_perspective_project(points, 2.0, rotation, np.array([100.0, 100.0]))
  np.testing.assert_allclose(projected, [[120.0, 60.0]])


def test_rotation_z_is_depth_towards_viewer():
  # A frontal face's nose (z = +100) stays nearest the camera (largest camera z).
  camera = geometry.rotate(np.array([[0.0, 0.0, 100.0], [0.0, 0.0, 0.0]]), np.eye(3))
  assert camera[0, 2] > camera[1, 2]


def test_perspective_matches_weak_perspective_far_away():
  rng = np.random.default_rng(0)
  points = rng.normal(0, 50, (10, 3))
  rotation = geometry.euler_to_matrix(0.1, 0.4, -0.2)
  distance_mm, focal_px = 1e6, 1e4
  projected, depth = geometry.perspective_project(
      points, rotation, np.array([0.0, 0.0, -distance_mm]), focal_px, np.array([64.0, 64.0]))
  weak = geometry.weak_perspective_project(points, focal_px / distance_mm, rotation,
                                           np.array([64.0, 64.0]))
  np.testing.assert_allclose(projected, weak, atol=1e-3)
  assert np.all(depth > 0)


def test_perspective_nearer_points_look_bigger():
  rotation = np.eye(3)
  points = np.array([[10.0, 10.0, 0.0], [10.0, 10.0, 50.0]])  # the second is nearer.
  projected, depth = geometry.perspective_project(points, rotation, np.array([0.0, 0.0, -500.0]),
                                                  1000.0, np.zeros(2))
  assert depth[1] < depth[0]
  assert projected[1, 0] > projected[0, 0] > 0  # x right.
  assert projected[1, 1] < projected[0, 1] < 0  # model up is image up (smaller y).


# ----------------------------------------------------------------------------------------------
# Euler round trips
# ----------------------------------------------------------------------------------------------


def test_euler_matrix_is_rotation_batched():
  rng = np.random.default_rng(1)
  rotation = geometry.euler_to_matrix(*_random_angles(rng, (4, 5)))
  assert rotation.shape == (4, 5, 3, 3)
  identity = np.einsum("...ji,...jk->...ik", rotation, rotation)
  np.testing.assert_allclose(identity, np.broadcast_to(np.eye(3), identity.shape), atol=1e-12)
  np.testing.assert_allclose(np.linalg.det(rotation), 1.0, atol=1e-12)


def test_euler_matches_composition_of_axis_rotations():
  a, b, c = 0.3, -0.7, 1.1
  rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
  ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
  rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
  np.testing.assert_allclose(geometry.euler_to_matrix(a, b, c), rz @ ry @ rx, atol=1e-12)


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jax"])
def test_euler_round_trip_random_batched(xp):
  rng = np.random.default_rng(2)
  angles = [a.astype(np.float32) for a in _random_angles(rng, (3, 50))]
  rotation = geometry.euler_to_matrix(*[xp.asarray(a) for a in angles])
  recovered = geometry.matrix_to_euler(rotation)
  for got, want in zip(recovered, angles):
    assert got.shape == (3, 50)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-4)
  again = geometry.euler_to_matrix(*recovered)
  np.testing.assert_allclose(np.asarray(again), np.asarray(rotation), atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("yaw", [np.pi / 2, -np.pi / 2])
def test_matrix_to_euler_gimbal_lock_reports_zero_pitch(dtype, yaw):
  rotation = geometry.euler_to_matrix(dtype(0.3), dtype(yaw), dtype(0.5))
  pitch, yaw_out, roll = geometry.matrix_to_euler(rotation)
  assert float(pitch) == 0.0
  np.testing.assert_allclose(float(yaw_out), yaw, atol=1e-6)
  np.testing.assert_allclose(geometry.euler_to_matrix(pitch, yaw_out, roll), rotation, atol=1e-6)


def test_matrix_to_euler_gimbal_lock_jax_gradient_is_finite():
  def f(angles):
    return sum(geometry.matrix_to_euler(geometry.euler_to_matrix(*angles)))
  grad = jax.grad(f)(jnp.array([0.3, np.pi / 2, 0.5], jnp.float32))
  assert np.all(np.isfinite(np.asarray(grad)))


def test_euler_numpy_jax_parity_and_jit():
  rng = np.random.default_rng(3)
  angles = [a.astype(np.float32) for a in _random_angles(rng, (7,))]
  numpy_result = geometry.euler_to_matrix(*angles)
  jax_result = geometry.euler_to_matrix(*[jnp.asarray(a) for a in angles])
  jit_result = jax.jit(geometry.euler_to_matrix)(*angles)
  assert isinstance(numpy_result, np.ndarray) and isinstance(jax_result, jax.Array)
  np.testing.assert_allclose(np.asarray(jax_result), numpy_result, atol=1e-6)
  np.testing.assert_allclose(np.asarray(jit_result), numpy_result, atol=1e-6)
  jit_back = jax.jit(geometry.matrix_to_euler)(jit_result)
  for got, want in zip(jit_back, geometry.matrix_to_euler(numpy_result)):
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Projections: parity, jit, vmap, gradients
# ----------------------------------------------------------------------------------------------


def _projection_inputs(rng, batch=()):
  points = rng.normal(0, 50, batch + (6, 3)).astype(np.float32)
  rotation = geometry.euler_to_matrix(*_random_angles(rng, batch, max_yaw=1.0)).astype(np.float32)
  scale = rng.uniform(0.5, 2.0, batch).astype(np.float32)
  translation = rng.normal(64, 5, batch + (2,)).astype(np.float32)
  return points, scale, rotation, translation


def test_weak_perspective_parity_jit_vmap():
  rng = np.random.default_rng(4)
  args = _projection_inputs(rng, (5,))
  numpy_result = geometry.weak_perspective_project(*args)
  assert numpy_result.shape == (5, 6, 2) and isinstance(numpy_result, np.ndarray)
  jax_args = [jnp.asarray(a) for a in args]
  np.testing.assert_allclose(np.asarray(geometry.weak_perspective_project(*jax_args)),
                             numpy_result, rtol=1e-5, atol=1e-4)
  jit_result = jax.jit(geometry.weak_perspective_project)(*jax_args)
  vmap_result = jax.vmap(geometry.weak_perspective_project)(*jax_args)
  np.testing.assert_allclose(np.asarray(jit_result), numpy_result, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(np.asarray(vmap_result), numpy_result, rtol=1e-5, atol=1e-4)


def test_perspective_parity_jit_vmap():
  rng = np.random.default_rng(5)
  points, _, rotation, _ = _projection_inputs(rng, (4,))
  translation = np.concatenate([rng.normal(0, 5, (4, 2)), np.full((4, 1), -600.0)],
                               -1).astype(np.float32)
  focal = np.full((4,), 800.0, np.float32)
  centre = np.full((4, 2), 64.0, np.float32)
  args = (points, rotation, translation, focal, centre)
  want_px, want_depth = geometry.perspective_project(*args)
  for fn in (geometry.perspective_project, jax.jit(geometry.perspective_project),
             jax.vmap(geometry.perspective_project)):
    got_px, got_depth = fn(*[jnp.asarray(a) for a in args])
    np.testing.assert_allclose(np.asarray(got_px), want_px, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(np.asarray(got_depth), want_depth, rtol=1e-5)


def test_check_grads_euler_to_matrix():
  with jax.enable_x64(True):
    check_grads(geometry.euler_to_matrix, (jnp.array([0.3, -0.2]), jnp.array([0.5, 1.0]),
                                           jnp.array([-0.4, 2.0])), order=1, modes=("fwd", "rev"))


def test_check_grads_matrix_to_euler():
  with jax.enable_x64(True):
    rotation = geometry.euler_to_matrix(jnp.array(0.3), jnp.array(0.5), jnp.array(-0.4))
    check_grads(geometry.matrix_to_euler, (rotation,), order=1, modes=("fwd", "rev"))


def test_check_grads_weak_perspective_project():
  rng = np.random.default_rng(6)
  with jax.enable_x64(True):
    points, scale, rotation, translation = [jnp.asarray(a, jnp.float64)
                                            for a in _projection_inputs(rng)]
    check_grads(geometry.weak_perspective_project, (points, scale, rotation, translation),
                order=1, modes=("fwd", "rev"))


def test_check_grads_perspective_project():
  rng = np.random.default_rng(7)
  with jax.enable_x64(True):
    points = jnp.asarray(rng.normal(0, 50, (5, 3)))
    rotation = geometry.euler_to_matrix(jnp.array(0.1), jnp.array(0.3), jnp.array(0.2))
    args = (points, rotation, jnp.array([1.0, -2.0, -600.0]), jnp.array(800.0),
            jnp.array([64.0, 60.0]))
    check_grads(geometry.perspective_project, args, order=1, modes=("fwd", "rev"))


# ----------------------------------------------------------------------------------------------
# Similarity estimation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [2, 3])
def test_estimate_similarity_recovers_known_transform(d):
  rng = np.random.default_rng(10 + d)
  source = rng.normal(0, 20, (12, d))
  scale, rotation, translation = _random_similarity(rng, d)
  target = geometry.apply_similarity(source, scale, rotation, translation)
  got_s, got_r, got_t = geometry.estimate_similarity(source, target)
  np.testing.assert_allclose(got_s, scale, rtol=1e-10)
  np.testing.assert_allclose(got_r, rotation, atol=1e-10)
  np.testing.assert_allclose(got_t, translation, atol=1e-8)
  np.testing.assert_allclose(np.linalg.det(got_r), 1.0, atol=1e-10)


@pytest.mark.parametrize("d", [2, 3])
def test_estimate_similarity_weights_ignore_outliers(d):
  rng = np.random.default_rng(20 + d)
  source = rng.normal(0, 20, (15, d))
  scale, rotation, translation = _random_similarity(rng, d)
  target = geometry.apply_similarity(source, scale, rotation, translation)
  target[:4] += rng.normal(0, 50, (4, d))  # corrupted points, weight 0.
  weights = np.ones(15)
  weights[:4] = 0.0
  got_s, got_r, got_t = geometry.estimate_similarity(source, target, weights)
  np.testing.assert_allclose(got_s, scale, rtol=1e-9)
  np.testing.assert_allclose(got_r, rotation, atol=1e-9)
  np.testing.assert_allclose(got_t, translation, atol=1e-7)
  unweighted_s, _, _ = geometry.estimate_similarity(source, target)
  assert abs(unweighted_s - scale) > 1e-3  # the weights did something.


def test_estimate_similarity_no_reflection():
  rng = np.random.default_rng(30)
  source = rng.normal(0, 1, (10, 2))
  target = source * np.array([-1.0, 1.0])  # a mirror image: best proper rotation, det +1.
  _, rotation, _ = geometry.estimate_similarity(source, target)
  np.testing.assert_allclose(np.linalg.det(rotation), 1.0, atol=1e-10)


def test_estimate_similarity_batched_jit_vmap_parity():
  rng = np.random.default_rng(31)
  source = rng.normal(0, 20, (4, 10, 3)).astype(np.float32)
  target = np.stack([geometry.apply_similarity(s, *_random_similarity(rng, 3)) for s in source])
  target = target.astype(np.float32)
  want = geometry.estimate_similarity(source, target)
  assert want[0].shape == (4,) and want[1].shape == (4, 3, 3) and want[2].shape == (4, 3)
  for fn in (geometry.estimate_similarity, jax.jit(geometry.estimate_similarity),
             jax.vmap(geometry.estimate_similarity)):
    got = fn(jnp.asarray(source), jnp.asarray(target))
    for g, w in zip(got, want):
      np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("d", [2, 3])
def test_check_grads_estimate_similarity(d):
  rng = np.random.default_rng(40 + d)
  with jax.enable_x64(True):
    source = rng.normal(0, 1, (8, d)) * np.arange(1, d + 1)  # distinct singular values.
    scale, rotation, translation = _random_similarity(rng, d)
    target = geometry.apply_similarity(source, scale, rotation, translation)
    target = target + rng.normal(0, 0.05, target.shape)
    weights = rng.uniform(0.5, 1.5, 8)
    args = tuple(jnp.asarray(a) for a in (source, target, weights))
    check_grads(jax.jit(geometry.estimate_similarity), args, order=1, modes=("fwd", "rev"))


# ----------------------------------------------------------------------------------------------
# Crops
# ----------------------------------------------------------------------------------------------


def test_square_box():
  box = np.array([10.0, 20.0, 30.0, 60.0])
  np.testing.assert_allclose(geometry.square_box(box), [0.0, 20.0, 40.0, 60.0])
  np.testing.assert_allclose(geometry.square_box(box, 1.5), [-10.0, 10.0, 50.0, 70.0])


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jax"])
def test_fraction_inside(xp):
  boxes = xp.asarray([[10.0, 10, 30, 20],      # inside the 100 x 50 image
                      [-20.0, 0, 20, 10],      # half cut by the left border
                      [90.0, 40, 110, 60],     # a quarter in the bottom-right corner
                      [100.0, 0, 120, 10],     # touching the right border from outside
                      [110.0, 0, 120, 10],     # right of the image, beside its rows
                      [10.0, 60, 20, 70],      # below the image, under its columns
                      [110.0, 60, 120, 70],    # beyond both borders (two negative overlaps)
                      [10.0, 49.5, 20, 59.5],  # half a pixel row inside: 0.5 * 10 of 100
                      [-50.0, -50, 150, 100]])  # around the image: 100 * 50 of 200 * 150
  inside = geometry.fraction_inside(boxes, 50, 100)
  assert isinstance(inside, type(boxes))  # NumPy in, NumPy out; JAX in, JAX out
  np.testing.assert_allclose(np.asarray(inside),
                             [1.0, 0.5, 0.25, 0.0, 0.0, 0.0, 0.0, 0.05, 5000 / 30000], rtol=1e-6)
  if xp is jnp:  # traced boxes (array-API generic: no NumPy call on them)
    jitted = jax.jit(geometry.fraction_inside, static_argnums=(1, 2))(boxes, 50, 100)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(inside), rtol=1e-6)


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jax"])
def test_landmark_box(xp):
  points = xp.asarray([[[3.0, 7.0], [-1.0, 9.0], [5.0, 2.0]],
                       [[0.5, 0.25], [0.5, 0.25], [0.75, 4.0]]])  # [2 faces, 3 points, (x, y)]
  box = geometry.landmark_box(points)
  assert isinstance(box, type(points)) and box.dtype == points.dtype
  np.testing.assert_array_equal(np.asarray(box), [[-1.0, 2.0, 5.0, 9.0], [0.5, 0.25, 0.75, 4.0]])
  np.testing.assert_array_equal(np.asarray(geometry.landmark_box(points[0])), [-1.0, 2.0, 5.0, 9.0])


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jax"])
def test_crop_uncrop_round_trip_batched(xp):
  rng = np.random.default_rng(50)
  boxes = geometry.square_box(np.concatenate([rng.uniform(0, 100, (3, 2)),
                                              rng.uniform(150, 250, (3, 2))], -1), 1.2)
  points = rng.uniform(-50, 300, (3, 68, 2))
  crop = geometry.image_to_crop(xp.asarray(points), xp.asarray(boxes), 64)
  back = geometry.crop_to_image(crop, xp.asarray(boxes), 64)
  np.testing.assert_allclose(np.asarray(back), points, rtol=1e-5, atol=1e-3)


def test_crop_maps_box_corners_and_centres():
  box = np.array([10.0, 20.0, 42.0, 52.0])  # 32 px square to a 16 px crop: 2 px per crop pixel.
  corners = geometry.image_to_crop(np.array([[10.0, 20.0], [42.0, 52.0]]), box, 16)
  np.testing.assert_allclose(corners, [[0.0, 0.0], [16.0, 16.0]])
  centres = geometry.crop_pixel_centres_in_image(box, 16)
  assert centres.shape == (16, 16, 2)
  # Crop pixel (row 0, column 1) has crop centre (1.5, 0.5) -> image (13, 21).
  np.testing.assert_allclose(centres[0, 1], [13.0, 21.0])
  np.testing.assert_allclose(centres[2, 0], [11.0, 25.0])
  # Same-size aligned box: crop pixel centres are image pixel centres.
  same = geometry.crop_pixel_centres_in_image(np.array([3.0, 5.0, 11.0, 13.0]), 8)
  np.testing.assert_allclose(same[0, 0], [3.5, 5.5])


def test_crop_pixel_centres_batched_jit_vmap():
  boxes = np.array([[0.0, 0.0, 32.0, 32.0], [5.0, 7.0, 21.0, 23.0]], np.float32)
  want = geometry.crop_pixel_centres_in_image(boxes, 8)
  assert want.shape == (2, 8, 8, 2)
  jit_fn = jax.jit(geometry.crop_pixel_centres_in_image, static_argnums=1)
  vmap_fn = jax.vmap(lambda b: geometry.crop_pixel_centres_in_image(b, 8))
  np.testing.assert_allclose(np.asarray(jit_fn(jnp.asarray(boxes), 8)), want, atol=1e-5)
  np.testing.assert_allclose(np.asarray(vmap_fn(jnp.asarray(boxes))), want, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Array-namespace dispatch, dtypes and batching (gaps found by mutation testing: see WORKSPACE.md)
# ----------------------------------------------------------------------------------------------


def _dispatch_cases():
  rng = np.random.default_rng(7)
  points = rng.normal(0, 50, (5, 3)).astype(np.float32)
  rotation = np.asarray(geometry.euler_to_matrix(0.1, -0.4, 0.2), np.float32)
  box = np.array([10.0, 20.0, 90.0, 120.0], np.float32)
  return {
      "weak_perspective_project": (geometry.weak_perspective_project,
                                   [points, np.float32(1.7), rotation,
                                    np.array([60.0, 70.0], np.float32)]),
      "perspective_project": (lambda *a: geometry.perspective_project(*a)[0],
                              [points, rotation, np.array([1.0, -2.0, -600.0], np.float32),
                               np.float32(800.0), np.array([64.0, 64.0], np.float32)]),
      "apply_similarity": (geometry.apply_similarity,
                           [points, np.float32(0.8), rotation,
                            np.array([1.0, 2.0, 3.0], np.float32)]),
      "square_box": (lambda b: geometry.square_box(b, 1.25), [box]),
      "estimate_similarity": (geometry.estimate_similarity,
                              [points, geometry.apply_similarity(points, np.float32(0.8), rotation,
                                                                 np.ones(3, np.float32)),
                               np.linspace(0.5, 1.0, 5, dtype=np.float32)]),
      "estimate_similarity_unweighted": (
          geometry.estimate_similarity, [points, geometry.apply_similarity(points, np.float32(0.8), rotation,
                                                               np.ones(3, np.float32))]),
      "crop_pixel_centres_in_image": (lambda b: geometry.crop_pixel_centres_in_image(b, 4), [box]),
      "euler_to_matrix": (geometry.euler_to_matrix,
                          [np.float32(0.1), np.float32(-0.4), np.float32(0.2)]),
  }


def _outputs(result):
  return list(result) if isinstance(result, tuple) else [result]


@pytest.mark.parametrize("name", sorted(_dispatch_cases()))
def test_any_jax_argument_gives_a_jax_result_equal_to_numpy(name):
  """Functions follow the namespace of *any* array argument (dff_jax.array_api.namespace): one
  JAX argument among NumPy ones gives JAX results equal to the all-NumPy ones (which stay NumPy
  and float32), and each argument alone can be traced under jit."""
  function, args = _dispatch_cases()[name]
  expected = _outputs(function(*args))
  for value in expected:
    assert isinstance(value, (np.ndarray, np.generic)) and value.dtype == np.float32, (
        name, type(value))
  for i in range(len(args)):
    mixed = list(args)
    mixed[i] = jnp.asarray(args[i])
    results = _outputs(function(*mixed))
    for result, want in zip(results, expected):
      assert isinstance(result, jax.Array), (name, i)
      np.testing.assert_allclose(np.asarray(result), want, rtol=1e-5, atol=1e-4)

    def traced(value, i=i):
      return function(*args[:i], value, *args[i + 1:])

    for result, want in zip(_outputs(jax.jit(traced)(jnp.asarray(args[i]))), expected):
      np.testing.assert_allclose(np.asarray(result), want, rtol=1e-5, atol=1e-4)


def test_square_boxes_and_crop_grids_of_a_batch_equal_one_box_at_a_time():
  boxes = np.array([[[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 45.0, 15.0], [1.0, 2.0, 3.0, 4.0]],
                    [[10.0, 0.0, 30.0, 60.0], [0.0, 0.0, 8.0, 8.0], [-4.0, -2.0, 4.0, 2.0]]],
                   np.float32)
  squares = geometry.square_box(boxes, 1.5)
  grids = geometry.crop_pixel_centres_in_image(boxes, 3)
  assert squares.shape == (2, 3, 4) and grids.shape == (2, 3, 3, 3, 2)
  for index in np.ndindex(2, 3):
    np.testing.assert_allclose(squares[index], geometry.square_box(boxes[index], 1.5))
    np.testing.assert_allclose(grids[index],
                               geometry.crop_pixel_centres_in_image(boxes[index], 3))
  # The side is the longer box side (per box), centred on the box.
  np.testing.assert_allclose(squares[0, 0], [-10.0, -5.0, 20.0, 25.0])


def test_perspective_projection_close_to_the_camera_is_exact():
  """Depths between the 1e-6 mm guard and 1 mm are divided by exactly, not clamped."""
  points = np.array([[2.0, 3.0, 0.0], [-1.0, 0.5, 0.0]])
  translation = np.array([0.0, 0.0, -0.5])  # 0.5 mm in front of the camera
  projected, depth = geometry.perspective_project(points, np.eye(3), translation, 100.0,
                                                  np.array([10.0, 20.0]))
  np.testing.assert_allclose(depth, [0.5, 0.5])
  np.testing.assert_allclose(projected, [[10.0 + 100.0 * 2.0 / 0.5, 20.0 - 100.0 * 3.0 / 0.5],
                                         [10.0 - 100.0 * 1.0 / 0.5, 20.0 - 100.0 * 0.5 / 0.5]])


def test_similarity_weights_need_not_sum_to_one():
  """Only the relative weights matter (they are normalised), however small their sum."""
  rng = np.random.default_rng(3)
  source = rng.normal(0, 10, (6, 3))
  scale, rotation, translation = _random_similarity(rng, 3)
  target = geometry.apply_similarity(source, scale, rotation, translation) + rng.normal(0, 0.5,
                                                                                       (6, 3))
  weights = rng.uniform(0.2, 1.0, 6)
  reference = geometry.estimate_similarity(source, target, weights)
  for factor in (1e-3, 0.2, 50.0):
    for got, want in zip(geometry.estimate_similarity(source, target, factor * weights),
                         reference):
      np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_similarity_of_a_source_smaller_than_one_unit():
  """The variance guard (1e-12) must not bite for small but regular sources (here ~0.05 units)."""
  rng = np.random.default_rng(5)
  source = rng.normal(0, 0.05, (8, 3))
  scale, rotation, translation = _random_similarity(rng, 3)
  target = geometry.apply_similarity(source, scale, rotation, translation)
  got_scale, got_rotation, got_translation = geometry.estimate_similarity(source, target)
  np.testing.assert_allclose(got_scale, scale, rtol=1e-6)
  np.testing.assert_allclose(got_rotation, rotation, atol=1e-6)
  np.testing.assert_allclose(got_translation, translation, atol=1e-6)
