"""Tests of dff_jax.alignment.fitting: recovery, gradients, jit, vmap, weights, validation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dff_jax import geometry
from dff_jax import metrics
from dff_jax.alignment import fitting
from dff_jax.face_model import load_face_model
from dff_jax.face_model import model as fm

from conftest import ICT_NPZ, require

# Expressions kept in the small test model (ICT / ARKit names; others: the first few).
_EXPRESSIONS = ("jawOpen", "mouthSmile_L", "eyeBlink_R", "browInnerUp_L")
# Alternations in the single-face fits (one compiled program per contour rule is shared).
ITERATIONS = 30


def _full_model():
  """The embedded default model; while its asset is missing, the ICT model in ../shared."""
  try:
    return load_face_model("default")
  except FileNotFoundError:
    require(ICT_NPZ)
    return load_face_model(ICT_NPZ)


@functools.lru_cache(maxsize=1)
def _small_model():
  """The default model cut to its landmark (both conventions) and contour-candidate vertices
  (ids remapped), 6 identity and 4 expression components: the same fitting problem, fast and
  well determined."""
  model = _full_model()
  names = tuple(model.expression_names)
  keep = [names.index(n) for n in _EXPRESSIONS if n in names]
  keep = keep or list(range(min(4, model.num_expression)))
  landmark_ids = np.asarray(model.landmark_vertex_ids)
  candidates = np.asarray(model.contour_candidates)
  used, inverse = np.unique(np.concatenate([landmark_ids, candidates.reshape(-1),
                                            np.asarray(model.landmark_3d_vertex_ids)]),
                            return_inverse=True)
  return model.replace(
      mean_vertices=np.asarray(model.mean_vertices, np.float32)[used],
      identity_basis=np.asarray(model.identity_basis, np.float32)[:6][:, used],
      expression_basis=np.asarray(model.expression_basis, np.float32)[keep][:, used],
      expression_std=np.asarray(model.expression_std, np.float32)[keep],
      triangles=np.zeros((0, 3), np.int32),
      vertex_part=np.asarray(model.vertex_part)[used],
      landmark_vertex_ids=inverse[:68].astype(np.int32),
      contour_candidates=inverse[68:-68].reshape(candidates.shape).astype(np.int32),
      landmark_3d_vertex_ids=inverse[-68:].astype(np.int32),
      albedo_mean=np.asarray(model.albedo_mean, np.float32)[used],
      albedo_basis=np.asarray(model.albedo_basis, np.float32)[:, used],
      expression_names=tuple(names[i] for i in keep) if names else ())


@pytest.fixture(scope="module")
def model():
  return _small_model()


def _synthesise(model, yaw_deg, contour, seed=0, noise_px=0.0):
  """Landmarks of a random face at a known pose, jaw chosen by the fit's own contour rule."""
  rng = np.random.default_rng(seed)
  shape = rng.normal(size=model.num_identity).astype(np.float32)
  expression = (rng.uniform(0.0, 1.0, model.num_expression)
                * np.asarray(model.expression_std)).astype(np.float32)
  pitch, yaw, roll = np.float32(0.08), np.float32(np.radians(yaw_deg)), np.float32(-0.05)
  rotation = geometry.euler_to_matrix(pitch, yaw, roll).astype(np.float32)
  scale, translation = np.float32(1.7), np.array([160.0, 170.0], np.float32)
  coefficients = np.concatenate([shape, expression])
  ids = np.asarray(fitting.select_landmark_vertex_ids(
      model, contour, jnp.asarray(coefficients), scale, jnp.asarray(rotation), translation,
      jnp.zeros((68, 2))))
  points = fm.vertices(model, shape, expression)[ids]
  landmarks = geometry.weak_perspective_project(points, scale, rotation, translation)
  landmarks = landmarks + noise_px * rng.normal(size=landmarks.shape)
  truth = dict(shape=shape, expression=expression, pitch=pitch, yaw=yaw, roll=roll, scale=scale,
               translation=translation, ids=ids)
  return landmarks.astype(np.float32), truth


@pytest.mark.parametrize("yaw_deg,contour", [(0.0, "fixed"), (25.0, "silhouette"),
                                             (-35.0, "silhouette"), (30.0, "nearest")])
def test_recovers_generating_pose_and_coefficients(model, yaw_deg, contour):
  landmarks, truth = _synthesise(model, yaw_deg, contour, seed=1)
  result = fitting.fit_landmarks(model, landmarks, regularisation=1e-5,
                                 num_iterations=ITERATIONS, contour=contour)
  np.testing.assert_allclose(result.landmarks_px, landmarks, atol=0.05)
  np.testing.assert_allclose(result.yaw_rad, truth["yaw"], atol=np.radians(0.3))
  np.testing.assert_allclose(result.pitch_rad, truth["pitch"], atol=np.radians(0.3))
  np.testing.assert_allclose(result.roll_rad, truth["roll"], atol=np.radians(0.3))
  np.testing.assert_allclose(result.scale, truth["scale"], rtol=5e-3)
  np.testing.assert_allclose(result.translation_px, truth["translation"], atol=0.5)
  np.testing.assert_allclose(result.shape_coefficients, truth["shape"], atol=0.05)
  np.testing.assert_allclose(result.expression_coefficients, truth["expression"], atol=0.05)
  np.testing.assert_array_equal(result.landmark_vertex_ids, truth["ids"])


def test_pose_estimate_exact_on_rigid_points(model):
  points = np.asarray(model.mean_vertices)[np.asarray(model.landmark_vertex_ids)]
  rotation = geometry.euler_to_matrix(0.2, -0.9, 0.3).astype(np.float32)
  projected = geometry.weak_perspective_project(points, np.float32(2.5), rotation,
                                                np.array([10.0, -4.0], np.float32))
  scale, r, t = jax.jit(fitting.estimate_pose_weak_perspective)(points, projected)
  np.testing.assert_allclose(scale, 2.5, rtol=1e-4)
  np.testing.assert_allclose(r, rotation, atol=1e-4)
  np.testing.assert_allclose(t, [10.0, -4.0], atol=1e-2)
  np.testing.assert_allclose(np.linalg.det(np.asarray(r)), 1.0, atol=1e-5)


def test_pose_estimate_exact_for_a_tiny_object_and_small_weights():
  """Planted: the pose is recovered whatever the object's size (a 0.4 mm object: its projected
  spread is far below 1 mm^2) and whatever the weights' sum (all 0.01: they sum to 0.3)."""
  rng = np.random.default_rng(5)
  points = rng.normal(0.0, 0.2, (30, 3)).astype(np.float32) + np.float32([0.05, -0.1, 0.3])
  rotation = geometry.euler_to_matrix(-0.3, 0.7, 0.2).astype(np.float32)
  projected = geometry.weak_perspective_project(points, np.float32(400.0), rotation,
                                                np.array([60.0, 40.0], np.float32))
  for weights in (None, np.full(30, 0.01, np.float32)):
    scale, r, t = fitting.estimate_pose_weak_perspective(points, projected, weights)
    np.testing.assert_allclose(scale, 400.0, rtol=1e-3)
    np.testing.assert_allclose(r, rotation, atol=2e-3)
    np.testing.assert_allclose(t, [60.0, 40.0], atol=0.05)


def test_fit_shape_linear_under_known_pose(model):
  landmarks, truth = _synthesise(model, 20.0, "fixed", seed=2)
  rotation = geometry.euler_to_matrix(truth["pitch"], truth["yaw"], truth["roll"])
  shape, expression = fitting.fit_shape_linear(
      model, landmarks, truth["scale"], rotation, truth["translation"], regularisation=1e-6,
      vertex_ids=truth["ids"])
  np.testing.assert_allclose(shape, truth["shape"], atol=1e-2)
  np.testing.assert_allclose(expression, truth["expression"], atol=1e-2)
  # Strong regularisation pulls towards the prior mean (zero).
  shape_reg, _ = fitting.fit_shape_linear(
      model, landmarks, truth["scale"], rotation, truth["translation"], regularisation=1e4,
      vertex_ids=truth["ids"])
  assert np.linalg.norm(shape_reg) < 0.5 * np.linalg.norm(truth["shape"])


def test_jit_equals_no_jit(model):
  landmarks, _ = _synthesise(model, 15.0, "nearest", seed=3, noise_px=1.0)
  eager = fitting.fit_shape_and_pose(model, landmarks, num_iterations=2)
  jitted = jax.jit(fitting.fit_shape_and_pose, static_argnames=("num_iterations", "contour"))(
      model, landmarks, num_iterations=2)
  for a, b in zip(eager, jitted):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_batch_dims_and_vmap_equal_loop(model):
  faces = [_synthesise(model, yaw, "silhouette", seed=s, noise_px=0.5)[0]
           for s, yaw in enumerate([-30.0, 0.0, 20.0, 45.0])]
  batch = np.stack(faces).reshape(2, 2, 68, 2)
  batched = fitting.fit_landmarks(model, batch, contour="silhouette", num_iterations=ITERATIONS)
  assert batched.rotation.shape == (2, 2, 3, 3)
  assert batched.landmarks_px.shape == (2, 2, 68, 2)
  assert batched.landmark_vertex_ids.shape == (2, 2, 68)
  fit = functools.partial(fitting.fit_shape_and_pose, model, contour="silhouette",
                          num_iterations=ITERATIONS)
  vmapped = jax.jit(jax.vmap(fit))(jnp.asarray(np.stack(faces)))
  for i, face in enumerate(faces):
    single = fitting.fit_landmarks(model, face, contour="silhouette", num_iterations=ITERATIONS)
    for field, a, b, c in zip(fitting.FitResult._fields, single, vmapped, batched):
      np.testing.assert_allclose(a, b[i], rtol=1e-3, atol=2e-3, err_msg=field)
      np.testing.assert_allclose(a, np.asarray(c).reshape((4,) + np.shape(a))[i], rtol=1e-3,
                                 atol=2e-3, err_msg=field)


def test_zero_weights_for_invisible_landmarks(model):
  landmarks, truth = _synthesise(model, 55.0, "nearest", seed=4)
  weights = np.ones(68, np.float32)
  weights[9:17] = 0.0  # the far jaw side
  weights[[42, 43, 44, 45, 46, 47]] = 0.0  # the far eye
  corrupted = landmarks.copy()
  corrupted[weights == 0] += 300.0  # garbage where unseen must not matter
  corrupted[10] = np.nan  # NaN where the weight is zero is allowed
  result = fitting.fit_landmarks(model, corrupted, weights, contour="nearest",
                                 num_iterations=ITERATIONS, regularisation=0.1)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in result)
  np.testing.assert_allclose(result.yaw_rad, truth["yaw"], atol=np.radians(2.0))
  visible = weights > 0
  nme = metrics.nme(np.asarray(result.landmarks_px), landmarks, "inter_ocular", visible)
  assert nme < 0.01
  assert np.all(np.isfinite(np.asarray(result.landmarks_px)[~visible]))
  # All-but-six landmarks unseen: the prior keeps the solve well posed.
  sparse = np.zeros(68, np.float32)
  sparse[[30, 36, 45, 48, 54, 8]] = 1.0
  result = fitting.fit_landmarks(model, landmarks, sparse, contour="fixed",
                                 num_iterations=ITERATIONS)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in result)


def test_gradients_match_finite_differences(model):
  landmarks, _ = _synthesise(model, 10.0, "fixed", seed=5, noise_px=1.0)
  landmarks = jnp.asarray(landmarks, jnp.float32)
  direction = jnp.asarray(np.random.default_rng(0).normal(size=(68, 2)), jnp.float32)

  @jax.jit
  def loss(offset, regularisation):
    result = fitting.fit_shape_and_pose(model, landmarks + offset * direction, None,
                                        regularisation, num_iterations=2, contour="fixed")
    return (jnp.sum(result.shape_coefficients**2) + 10.0 * result.yaw_rad
            + jnp.sum(result.landmarks_px[:5]) / 100.0)

  # Manual central finite differences (float32 loss ~16: eps 0.1 keeps rounding noise small).
  value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  _, (grad_offset, grad_regularisation) = value_and_grad(0.0, 1.0)
  eps = 0.1
  fd_offset = (loss(eps, 1.0) - loss(-eps, 1.0)) / (2 * eps)
  fd_regularisation = (loss(0.0, 1.0 + eps) - loss(0.0, 1.0 - eps)) / (2 * eps)
  np.testing.assert_allclose(grad_offset, fd_offset, rtol=3e-2, atol=1e-3)
  np.testing.assert_allclose(grad_regularisation, fd_regularisation, rtol=3e-2, atol=1e-3)
  assert abs(float(grad_offset)) > 1e-2 and abs(float(grad_regularisation)) > 1e-2
  grad = jax.jit(jax.grad(lambda lm: jnp.sum(fitting.fit_shape_and_pose(
      model, lm, num_iterations=1, contour="nearest").expression_coefficients)))(landmarks)
  assert grad.shape == (68, 2) and bool(jnp.all(jnp.isfinite(grad)))


@pytest.mark.parametrize("bad,message", [
    (np.zeros((67, 2)), "shape"),
    (np.zeros((68, 3)), "shape"),
    (np.zeros(68), "shape"),
])
def test_bad_shape_raises_clear_value_error(model, bad, message):
  with pytest.raises(ValueError, match=message):
    fitting.fit_landmarks(model, bad)


def test_bad_values_raise_clear_value_error(model):
  landmarks, _ = _synthesise(model, 0.0, "fixed")
  nan = landmarks.copy()
  nan[3, 0] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    fitting.fit_landmarks(model, nan)
  with pytest.raises(ValueError, match="weights"):
    fitting.fit_landmarks(model, landmarks, -np.ones(68))
  with pytest.raises(ValueError, match="at least 6"):
    fitting.fit_landmarks(model, landmarks, np.zeros(68))
  with pytest.raises(ValueError, match="contour"):
    fitting.fit_landmarks(model, landmarks, contour="outline")
  with pytest.raises(ValueError, match="regularisation"):
    fitting.fit_landmarks(model, landmarks, regularisation=-1.0)


def test_silhouette_selection_matches_face_model_rule(model):
  rng = np.random.default_rng(7)
  coefficients = rng.normal(size=model.num_identity + model.num_expression).astype(np.float32)
  mesh = fm.vertices(model, coefficients[:model.num_identity], coefficients[model.num_identity:])
  for yaw in (-50.0, -10.0, 0.0, 35.0, 70.0):
    rotation = geometry.euler_to_matrix(0.1, np.radians(yaw), 0.05).astype(np.float32)
    ours = fitting.select_landmark_vertex_ids(model, "silhouette", jnp.asarray(coefficients),
                                              1.0, jnp.asarray(rotation), np.zeros(2),
                                              jnp.zeros((68, 2)))
    np.testing.assert_array_equal(ours, fm.landmark_vertex_ids_for_pose(model, rotation, mesh))


def test_pose_and_shape_fits_broadcast_shared_and_batched_arguments(model):
  """The public fits take leading batch dims on any argument and broadcast the rest: shared
  model points with per-face image points and weights, or per-face poses with shared vertex
  ids, recover each planted face as its own single call does."""
  points = np.asarray(model.mean_vertices)[np.asarray(model.landmark_vertex_ids)]
  poses = [(2.5, (0.2, -0.9, 0.3), (10.0, -4.0)), (1.2, (-0.1, 0.4, 0.0), (50.0, 60.0)),
           (0.8, (0.0, 1.1, -0.2), (-5.0, 7.0))]
  projected = np.stack([geometry.weak_perspective_project(
      points, np.float32(s), geometry.euler_to_matrix(*angles).astype(np.float32),
      np.array(t, np.float32)) for s, angles, t in poses])  # [3, 68, 2]
  weights = np.ones((3, 68), np.float32)
  weights[1, :17] = 0.0  # face 1 without its jaw
  scale, rotation, translation = fitting.estimate_pose_weak_perspective(points, projected,
                                                                        weights)
  assert scale.shape == (3,) and rotation.shape == (3, 3, 3) and translation.shape == (3, 2)
  for k, (s, angles, t) in enumerate(poses):
    np.testing.assert_allclose(scale[k], s, rtol=1e-4)
    np.testing.assert_allclose(rotation[k], geometry.euler_to_matrix(*angles), atol=1e-4)
    np.testing.assert_allclose(translation[k], t, atol=1e-2)
  # Shape under known poses: per-face landmarks and poses, shared vertex ids and weights.
  faces = [_synthesise(model, yaw, "fixed", seed=s) for s, yaw in enumerate([-20.0, 10.0])]
  landmarks = np.stack([f[0] for f in faces])
  truths = [f[1] for f in faces]
  rotations = np.stack([geometry.euler_to_matrix(t["pitch"], t["yaw"], t["roll"])
                        for t in truths]).astype(np.float32)
  shape, expression = fitting.fit_shape_linear(
      model, landmarks, np.array([t["scale"] for t in truths]), rotations,
      np.stack([t["translation"] for t in truths]),
      vertex_ids=np.asarray(model.landmark_3d_vertex_ids), weights=np.ones(68, np.float32),
      regularisation=1e-6)
  assert shape.shape == (2, model.num_identity)
  for k, truth in enumerate(truths):
    np.testing.assert_allclose(shape[k], truth["shape"], atol=1e-2)
    np.testing.assert_allclose(expression[k], truth["expression"], atol=1e-2)


# ----------------------------------------------------------------------------------------------
# Input checks: what is accepted, what is refused and what the message says
# ----------------------------------------------------------------------------------------------


def test_validate_landmarks_types_broadcast_and_masking():
  """float64 landmarks and integer weights come back float32; shared weights broadcast over the
  batch; a NaN landmark of weight 0 becomes exactly 0 and is not reported."""
  rng = np.random.default_rng(3)
  landmarks = rng.uniform(10, 90, (2, 68, 2))
  landmarks[1, 4] = np.nan
  weights = np.ones(68, np.int64)
  weights[4] = 0
  out, w = fitting.validate_landmarks(landmarks, weights)
  assert out.dtype == np.float32 and w.dtype == np.float32
  assert w.shape == (2, 68) and np.all(w[:, 4] == 0) and np.all(np.delete(w, 4, axis=1) == 1)
  np.testing.assert_array_equal(out[1, 4], [0.0, 0.0])
  np.testing.assert_allclose(out[0], landmarks[0], rtol=1e-6)
  out, w = fitting.validate_landmarks(landmarks[0])
  assert out.dtype == np.float32 and w.dtype == np.float32 and w.shape == (68,)


def test_validate_landmarks_messages():
  landmarks = np.random.default_rng(4).uniform(10, 90, (2, 68, 2))
  with pytest.raises(ValueError, match=r"weights must broadcast to \(2, 68\) \(one per landmark\), "
                                       r"got shape \(67,\)"):
    fitting.validate_landmarks(landmarks, np.ones(67))
  with pytest.raises(ValueError, match=r"^weights must be finite and >= 0 \(0 marks an unseen "
                                       r"landmark\)$"):
    fitting.validate_landmarks(landmarks, -np.ones(68))
  # Seven bad points of positive weight (the first five are named) and one of weight 0 (not).
  bad = landmarks.copy()
  weights = np.ones((2, 68))
  for k in (3, 7, 9, 11, 20, 30, 40):
    bad[1, k, 0] = np.nan
  bad[0, 2, 1] = np.inf
  weights[0, 2] = 0.0
  with pytest.raises(ValueError, match=r"at \(batch\.\.\., landmark\) \[\[1, 3\], \[1, 7\], "
                                       r"\[1, 9\], \[1, 11\], \[1, 20\]\]; give those landmarks "
                                       r"weight 0 or fix the input$"):
    fitting.validate_landmarks(bad, weights)
  # Face 1 has only 5 landmarks of positive weight (face 0 has 68: a count over the whole
  # batch would pass).
  few = np.ones((2, 68))
  few[1, 5:] = 0.0
  with pytest.raises(ValueError, match=r"^need at least 6 landmarks with positive weight per "
                                       r"face to fit a pose$"):
    fitting.validate_landmarks(landmarks, few)
  few[1, 5] = 0.5   # six: enough
  fitting.validate_landmarks(landmarks, few)


def test_fit_landmarks_argument_limits(model):
  """One iteration and no regularisation are valid; 0 iterations, a float count and a negative
  regularisation are refused with the value in the message."""
  landmarks, _ = _synthesise(model, 10.0, "fixed", seed=2)
  result = fitting.fit_landmarks(model, landmarks, regularisation=0.0, num_iterations=1,
                                 contour="fixed")
  assert np.all(np.isfinite(result.landmarks_px))
  for bad, message in ((0, r"num_iterations must be an int >= 1, got 0"),
                       (2.0, r"num_iterations must be an int >= 1, got 2\.0")):
    with pytest.raises(ValueError, match=message):
      fitting.fit_landmarks(model, landmarks, num_iterations=bad)
  with pytest.raises(ValueError, match=r"regularisation must be finite and >= 0, got -1\.0"):
    fitting.fit_landmarks(model, landmarks, regularisation=-1.0)


def test_batched_fits_with_default_weights_and_per_face_ids(model):
  """Batched calls without weights, with per-face vertex ids and weights and with different
  scales per face give each face's own single-call answer (and the planted truth)."""
  faces = [_synthesise(model, yaw, "fixed", seed=s) for s, yaw in enumerate([-25.0, 15.0])]
  truths = [f[1] for f in faces]
  zoom = np.float32(2.0)   # face 1 drawn twice as large: scale and translation double
  landmarks = np.stack([faces[0][0], faces[1][0] * zoom])
  scales = np.array([truths[0]["scale"], truths[1]["scale"] * zoom], np.float32)
  translations = np.stack([truths[0]["translation"], truths[1]["translation"] * zoom])
  rotations = np.stack([geometry.euler_to_matrix(t["pitch"], t["yaw"], t["roll"])
                        for t in truths]).astype(np.float32)
  points = np.stack([fm.vertices(model, t["shape"], t["expression"])[t["ids"]] for t in truths])
  scale, rotation, translation = fitting.estimate_pose_weak_perspective(points, landmarks)
  np.testing.assert_allclose(scale, scales, rtol=1e-3)
  np.testing.assert_allclose(rotation, rotations, atol=1e-3)
  np.testing.assert_allclose(translation, translations, atol=0.05)
  ids = np.stack([t["ids"] for t in truths]).astype(np.int32)
  weights = np.ones((2, 68), np.float32)
  weights[0, 60:] = 0.0
  for kwargs in (dict(vertex_ids=ids), dict(vertex_ids=ids, weights=weights)):
    shape, expression = fitting.fit_shape_linear(model, landmarks, scales, rotations,
                                                 translations, regularisation=1e-6, **kwargs)
    for k, truth in enumerate(truths):
      single = fitting.fit_shape_linear(
          model, landmarks[k], scales[k], rotations[k], translations[k], vertex_ids=ids[k],
          weights=None if "weights" not in kwargs else weights[k], regularisation=1e-6)
      np.testing.assert_allclose(shape[k], single[0], atol=1e-4)
      np.testing.assert_allclose(shape[k], truth["shape"], atol=1e-2)
      np.testing.assert_allclose(expression[k], truth["expression"], atol=1e-2)
