"""Tests for dff_jax.face_model: loaders (every layout), the embedded default, the pure 3DMM math
(NumPy/JAX parity, jit, vmap), pose-dependent contour landmarks and the albedo model."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

from conftest import ICT_NPZ, ROOT, SFM_NPZ, require
from dff_jax import geometry
from dff_jax.face_model import compare, contour, loaders
from dff_jax.face_model import jax_support  # noqa: F401  (registers the pytree)
from dff_jax.face_model import model as model_lib
from dff_jax.face_model.model import FaceModel


@pytest.fixture(scope="module")
def default():
  return loaders.default_face_model()


def _rotation(yaw_deg, pitch_deg=0.0, roll_deg=0.0):
  return geometry.euler_to_matrix(np.deg2rad(pitch_deg), np.deg2rad(yaw_deg),
                                  np.deg2rad(roll_deg)).astype(np.float32)


def _tiny_model(rng, num_vertices=24, ki=3, ke=2, ka=2):
  """A small random but valid FaceModel (not a face; for layout and math tests)."""
  landmarks = rng.integers(0, num_vertices, 68).astype(np.int32)
  candidates = rng.integers(0, num_vertices, (17, 4)).astype(np.int32)
  candidates[:, 0] = landmarks[:17]
  return FaceModel(
      mean_vertices=rng.normal(0, 50, (num_vertices, 3)).astype(np.float32),
      identity_basis=rng.normal(0, 2, (ki, num_vertices, 3)).astype(np.float32),
      expression_basis=rng.normal(0, 2, (ke, num_vertices, 3)).astype(np.float32),
      expression_std=np.full(ke, 0.3, np.float32),
      triangles=rng.integers(0, num_vertices, (30, 3)).astype(np.int32),
      vertex_part=rng.integers(0, 5, num_vertices).astype(np.int32),
      landmark_vertex_ids=landmarks, landmark_3d_vertex_ids=landmarks[::-1].copy(),
      contour_candidates=candidates,
      albedo_mean=rng.uniform(0, 1, (num_vertices, 3)).astype(np.float32),
      albedo_basis=rng.normal(0, 0.05, (ka, num_vertices, 3)).astype(np.float32),
      name="tiny", expression_names=tuple(f"e{k}" for k in range(ke)))


# ----------------------------------------------------------------------------------------------
# The embedded default
# ----------------------------------------------------------------------------------------------


def test_default_asset_is_small_and_licensed():
  asset = ROOT / "dff_jax" / "assets" / "face_model_ict.npz"
  assert asset.stat().st_size <= 8_000_000
  licence = (ROOT / "dff_jax" / "assets" / "LICENSE-ICT-FaceKit.txt").read_text()
  assert "MIT License" in licence and "USC Institute for Creative Technologies" in licence


def test_default_loads_without_shared_and_without_jax(tmp_path):
  code = (
      "import sys\n"
      "import dff_jax.face_model as fm\n"
      "m = fm.load_face_model('default')\n"
      "assert m.num_vertices > 1000 and m.name == 'ict_default'\n"
      "assert 'jax' not in sys.modules, 'dff_jax.face_model imported jax'\n"
      "try:\n"
      "  fm.load_face_model('sfm')\n"
      "except FileNotFoundError as e:\n"
      "  assert 'sfm_3448.npz' in str(e) and 'default' in str(e)\n"
      "else:\n"
      "  raise AssertionError('no error for an absent ../shared')\n")
  env = dict(os.environ, DFF_SHARED_DIR=str(tmp_path / "no_shared"))
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr


def test_default_fields(default):
  v = default.num_vertices
  assert default.mean_vertices.shape == (v, 3) and default.mean_vertices.dtype == np.float32
  assert 40 <= default.num_identity <= 60
  assert default.identity_basis.dtype == np.float32
  assert default.expression_basis.shape == (53, v, 3) and len(default.expression_names) == 53
  np.testing.assert_allclose(default.expression_std, loaders.ICT_EXPRESSION_STD)
  assert default.landmark_vertex_ids.shape == (68,)
  assert default.landmark_vertex_ids.min() >= 0 and default.landmark_vertex_ids.max() < v
  np.testing.assert_array_equal(default.contour_candidates[:, 0], default.landmark_vertex_ids[:17])
  assert default.albedo_mean.min() >= 0 and default.albedo_mean.max() <= 1
  assert default.triangles.max() < v


def test_default_outer_eye_corners_in_mm(default):
  corners = default.mean_vertices[default.landmark_vertex_ids[[36, 45]]]
  np.testing.assert_allclose(corners[:, 0], [-44.6, 44.6], atol=0.2)  # ICT: +-4.46 cm


def test_identity_coefficients_are_standard_normal_scale(default):
  """Coefficients ~N(0, 1) must give plausible faces: outer-eye-corner distances vary by a few
  millimetres (human adults: sd ~ 4-6 mm), not by microns or centimetres."""
  rng = np.random.default_rng(0)
  coefficients = rng.normal(size=(400, default.num_identity)).astype(np.float32)
  points = model_lib.landmarks_3d(default, coefficients,
                                  np.zeros((400, default.num_expression), np.float32))
  distance = np.linalg.norm(points[:, 36] - points[:, 45], axis=-1)
  assert 1.5 < distance.std() < 10.0
  assert abs(distance.mean() - 89.2) < 1.5
  # Per-mode RMS vertex displacement of the first (largest) mode: millimetres.
  rms = np.sqrt(np.mean(np.sum(default.identity_basis[0] ** 2, axis=-1)))
  assert 1.0 < rms < 20.0


def test_default_matches_ict_source():
  ict = loaders.load_face_model(require(ICT_NPZ))
  default = loaders.default_face_model()
  np.testing.assert_allclose(default.mean_vertices, ict.mean_vertices, atol=1e-4)
  energy = np.sum(ict.identity_basis.astype(np.float64) ** 2, axis=(1, 2))
  np.testing.assert_allclose(default.identity_basis[0], ict.identity_basis[np.argmax(energy)],
                             atol=0.02)
  np.testing.assert_array_equal(default.landmark_vertex_ids, ict.landmark_vertex_ids)


# ----------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------


def test_ict_loader_converts_cm_to_mm():
  ict = loaders.load_face_model("ict") if ICT_NPZ.exists() else pytest.skip("no ICT")
  raw = np.load(ICT_NPZ)
  np.testing.assert_allclose(ict.mean_vertices, raw["mean_vertices"] * 10, rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(ict.identity_basis[3], raw["identity_modes"][3] * 10, atol=1e-5)
  corners = ict.mean_vertices[ict.landmark_vertex_ids[[36, 45]], 0]
  np.testing.assert_allclose(corners, [-44.6, 44.6], atol=0.1)
  assert ict.num_identity == 100 and ict.num_expression == 53


def test_sfm_loader():
  require(SFM_NPZ)
  sfm = loaders.load_face_model("sfm")
  raw = np.load(SFM_NPZ)
  expected = raw["shape_basis"][2] * np.sqrt(raw["shape_eigenvalues"][2])
  np.testing.assert_allclose(sfm.identity_basis[2], expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(sfm.expression_std, loaders.SFM_EXPRESSION_STD)
  assert sfm.num_expression == 6 and sfm.vertex_part.max() == model_lib.PART_FACE
  # Every landmark is filled; the SFM ones are kept.
  assert sfm.landmark_vertex_ids.min() >= 0
  fixed = raw["landmark_vertex_ids"] >= 0
  np.testing.assert_array_equal(sfm.landmark_vertex_ids[fixed], raw["landmark_vertex_ids"][fixed])
  jaw = sfm.mean_vertices[sfm.landmark_vertex_ids[:17]]
  assert np.all(jaw[:8, 0] < 0) and np.all(jaw[9:, 0] > 0)          # right side x < 0
  assert np.all(np.diff(jaw[:9, 1]) < 2.0)                           # going down to the chin
  np.testing.assert_allclose(jaw[:8, 0], -jaw[9:][::-1, 0], atol=4.0)  # roughly symmetric
  mouth = sfm.mean_vertices[sfm.landmark_vertex_ids[[48, 60, 64, 54]], 0]
  assert mouth[0] < mouth[1] < 0 < mouth[2] < mouth[3]               # inner corners inside


def _bfm_fixture(path, default, offset_mm=(4.0, -7.0, -25.0)):
  """A tiny BFM-2009-layout .mat: the default's face near the nose, in micrometres, shifted."""
  v = default.mean_vertices.astype(np.float64)
  nose = v[default.landmark_vertex_ids[30]]
  keep = (default.vertex_part == model_lib.PART_FACE) & (np.linalg.norm(v - nose, axis=1) < 95)
  keep_ids = np.flatnonzero(keep)
  new_id = np.full(len(v), -1)
  new_id[keep_ids] = np.arange(len(keep_ids))
  triangles = new_id[default.triangles]
  triangles = triangles[np.all(triangles >= 0, axis=1)]
  rng = np.random.default_rng(0)
  n = len(keep_ids)
  shape_pc = np.linalg.qr(rng.normal(size=(3 * n, 3)))[0]
  shape_ev = np.array([60000.0, 30000.0, 10000.0])            # um, standard deviations
  tex_pc = np.linalg.qr(rng.normal(size=(3 * n, 2)))[0]
  tex_ev = np.array([900.0, 400.0])
  mat = {
      "shapeMU": ((v[keep_ids] + offset_mm) * 1000.0).reshape(-1, 1),
      "shapePC": shape_pc, "shapeEV": shape_ev.reshape(-1, 1),
      "texMU": (default.albedo_mean[keep_ids].astype(np.float64) * 255).reshape(-1, 1),
      "texPC": tex_pc, "texEV": tex_ev.reshape(-1, 1),
      "tl": (triangles + 1).astype(np.float64),
  }
  scipy.io.savemat(path, mat)
  return mat, keep_ids, new_id


def test_bfm_loader_tiny_fixture(tmp_path, default):
  path = tmp_path / "01_MorphableModel.mat"
  mat, keep_ids, new_id = _bfm_fixture(path, default)
  bfm = loaders.load_face_model(path)
  n = len(keep_ids)
  expected_mean = mat["shapeMU"].reshape(n, 3) / 1000.0
  np.testing.assert_allclose(bfm.mean_vertices, expected_mean, atol=1e-3)
  expected_mode = (mat["shapePC"][:, 1] * 30000.0 / 1000.0).reshape(n, 3)
  np.testing.assert_allclose(bfm.identity_basis[1], expected_mode, atol=1e-4)
  np.testing.assert_array_equal(bfm.triangles, mat["tl"].astype(np.int32) - 1)  # 1-based -> 0
  np.testing.assert_allclose(bfm.albedo_mean, default.albedo_mean[keep_ids], atol=1e-5)
  assert bfm.num_expression == 0 and bfm.num_albedo == 2
  # Landmarks transferred by ICP land on the right vertices (the offset is undone).
  moved = bfm.mean_vertices[bfm.landmark_vertex_ids[17:]]
  truth = default.mean_vertices[default.landmark_vertex_ids[17:]] + np.array([4.0, -7.0, -25.0])
  assert np.median(np.linalg.norm(moved - truth, axis=1)) < 0.5
  # Explicit landmark ids are used as given.
  given = new_id[default.landmark_vertex_ids]
  if np.all(given >= 0):
    explicit = loaders.load_face_model(path, landmark_vertex_ids=given)
    np.testing.assert_array_equal(explicit.landmark_vertex_ids, given)
    # BFM's own ids are its fixed vertices: the 3D convention too.
    np.testing.assert_array_equal(explicit.landmark_3d_vertex_ids, given)
  # Transferred, the 3D convention differs from the frontal one on the jaw only.
  np.testing.assert_array_equal(bfm.landmark_3d_vertex_ids[17:], bfm.landmark_vertex_ids[17:])


def test_bfm_loader_rejects_bad_shapes(tmp_path, default):
  path = tmp_path / "bad.mat"
  mat, _, _ = _bfm_fixture(tmp_path / "good.mat", default)
  mat["shapePC"] = mat["shapePC"][:-3]
  scipy.io.savemat(path, mat)
  with pytest.raises(ValueError, match="shapePC"):
    loaders.load_face_model(path)


def test_own_layout_round_trip(tmp_path):
  model = _tiny_model(np.random.default_rng(0))
  path = loaders.save_face_model(model, tmp_path / "tiny.npz")
  loaded = loaders.load_face_model(path)
  for field in model_lib.DATA_FIELDS:
    np.testing.assert_array_equal(getattr(loaded, field), getattr(model, field), err_msg=field)
  assert loaded.name == "tiny" and loaded.expression_names == ("e0", "e1")
  compact = loaders.load_face_model(loaders.save_face_model(model, tmp_path / "c.npz", True))
  assert compact.identity_basis.dtype == np.float32
  np.testing.assert_allclose(compact.identity_basis, model.identity_basis, rtol=2e-3, atol=2e-3)


def test_file_of_our_layout_without_3d_landmarks_uses_the_frontal_ones(tmp_path):
  """Files saved before the 3D-convention landmarks existed still load: their 3D landmarks are
  the frontal ones."""
  model = _tiny_model(np.random.default_rng(1))
  path = loaders.save_face_model(model, tmp_path / "tiny.npz")
  with np.load(path) as data:
    arrays = {k: data[k] for k in data.files if k != "landmark_3d_vertex_ids"}
  np.savez(tmp_path / "old.npz", **arrays)
  old = loaders.load_face_model(tmp_path / "old.npz")
  np.testing.assert_array_equal(old.landmark_3d_vertex_ids, model.landmark_vertex_ids)
  bad = dict(arrays, landmark_3d_vertex_ids=np.full(68, 10_000, np.int32))
  np.savez(tmp_path / "bad.npz", **bad)
  with pytest.raises(ValueError, match="bad.npz.*landmark_3d_vertex_ids must hold vertex ids"):
    loaders.load_face_model(tmp_path / "bad.npz")


def test_jaw_line_at_landmark_heights_planted():
  """Planted: a vertical jaw line 30 mm behind the frontal jaw on each side, with skin vertices
  every 5 mm of height on it; each jaw landmark takes the line's vertex at its own height, one the
  line does not reach (above its top) and the chin keep their frontal vertices."""
  heights = np.arange(40.0, -41.0, -5.0)                              # 17 heights, top down
  line_right = np.stack([np.full(17, -70.0), heights, np.full(17, 20.0)], 1)
  line_left = line_right * np.array([-1.0, 1.0, 1.0])
  jaw_heights = np.array([55.0, 30.0, 20.0, 10.0, 0.0, -10.0, -20.0, -30.0])  # rows 0..7
  frontal_right = np.stack([np.full(8, -72.0), jaw_heights, np.full(8, 50.0)], 1)
  frontal_left = frontal_right[::-1] * np.array([-1.0, 1.0, 1.0])     # rows 9..16
  chin = np.array([[0.0, -75.0, 100.0]])
  vertices = np.concatenate([line_right, line_left, frontal_right, chin, frontal_left])
  # Decoy skin vertices 3 mm off the line (never nearer than the line's own vertices).
  decoys = line_right[::2] + np.array([0.0, 2.5, 3.0])
  vertices = np.concatenate([vertices, decoys])
  jaw_ids = np.arange(34, 51)
  line_r, line_l = np.arange(0, 17), np.arange(17, 34)
  snap = np.concatenate([line_r, line_l, np.arange(51, 51 + len(decoys))])
  got = contour.jaw_line_at_landmark_heights(vertices, snap, line_r, line_l, jaw_ids)
  assert got.dtype == np.int32 and got.shape == (17,)
  assert got[0] == jaw_ids[0] and got[8] == jaw_ids[8] and got[16] == jaw_ids[16]  # not reached
  for row in list(range(1, 8)) + list(range(9, 16)):
    line = line_r if row < 8 else line_l
    expected = line[np.flatnonzero(heights == vertices[jaw_ids[row], 1])[0]]
    assert got[row] == expected, row
  # Between two line vertices: the interpolated point snaps to the nearer one.
  vertices_mid = vertices.copy()
  vertices_mid[jaw_ids[3], 1] = 11.0                                  # 1 mm above 10
  got = contour.jaw_line_at_landmark_heights(vertices_mid, snap, line_r, line_l, jaw_ids)
  assert got[3] == line_r[np.flatnonzero(heights == 10.0)[0]]


def test_default_3d_jaw_lies_on_the_ict_jawline_at_the_frontal_heights(default):
  """The shipped 3D-convention landmarks: the 51 inner points and the chin are the frontal
  ones; every other jaw point keeps its frontal height (within the mesh spacing) and sits on
  ICT's extended jawline, behind the frontal (silhouette) vertex at ear level."""
  frontal = np.asarray(default.landmark_vertex_ids)
  jaw3d = np.asarray(default.landmark_3d_vertex_ids)
  np.testing.assert_array_equal(jaw3d[17:], frontal[17:])
  assert jaw3d[8] == frontal[8]
  v = np.asarray(default.mean_vertices, np.float64)
  moved = [j for j in range(17) if j != 8]
  assert np.abs(v[jaw3d[moved], 1] - v[frontal[moved], 1]).max() < 3.5
  for rows in (range(0, 5), range(12, 17)):   # ear level to the jaw's angle
    depth = v[frontal[list(rows)], 2] - v[jaw3d[list(rows)], 2]
    assert depth.min() > 5.0, depth
  if ICT_NPZ.exists():
    with np.load(ICT_NPZ) as ict:
      lines = [ict["right_contour_vertex_ids"], ict["left_contour_vertex_ids"]]
    for rows, line in ((range(0, 8), lines[0]), (range(9, 17), lines[1])):
      points = v[line]
      segments = [(points[k], points[k + 1]) for k in range(len(points) - 1)]
      for j in rows:
        p = v[jaw3d[j]]
        distance = min(np.linalg.norm(p - (a + np.clip(np.dot(p - a, b - a) / np.dot(b - a, b - a),
                                                         0, 1) * (b - a))) for a, b in segments)
        assert distance < 2.5, (j, distance)


def test_missing_file_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing_here.npz"):
    loaders.load_face_model(tmp_path / "nothing_here.npz")


def test_malformed_files(tmp_path):
  path = tmp_path / "wrong_keys.npz"
  np.savez(path, foo=np.zeros(3))
  with pytest.raises(ValueError, match="wrong_keys.npz.*foo"):
    loaders.load_face_model(path)
  # Our layout with NaNs.
  model = _tiny_model(np.random.default_rng(1))
  bad = model.replace(mean_vertices=model.mean_vertices.copy())
  bad.mean_vertices[3, 1] = np.nan
  arrays = {f: getattr(bad, f) for f in model_lib.DATA_FIELDS}
  np.savez(tmp_path / "nan.npz", **arrays, name="x", expression_names=np.array(["a", "b"]),
           format_version=1)
  with pytest.raises(ValueError, match="NaN"):
    loaders.load_face_model(tmp_path / "nan.npz")
  # ICT layout with a wrong shape.
  np.savez(tmp_path / "ict_bad.npz", mean_vertices=np.zeros((10, 2)),
           identity_modes=np.zeros((2, 10, 3)), expression_modes=np.zeros((1, 10, 3)),
           expression_names=np.array(["a"]), triangles=np.zeros((1, 3), int),
           vertex_part=np.zeros(10, int), landmark_vertex_ids=np.zeros(68, int))
  with pytest.raises(ValueError, match=r"mean_vertices has shape \[10, 2\], expected \[\*, 3\]"):
    loaders.load_face_model(tmp_path / "ict_bad.npz")
  # Not a zip at all.
  (tmp_path / "garbage.npz").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="garbage.npz"):
    loaders.load_face_model(tmp_path / "garbage.npz")


def test_default_face_model_is_cached_and_read_only():
  a, b = loaders.default_face_model(), loaders.default_face_model()
  assert a is b
  with pytest.raises(ValueError):
    a.mean_vertices[0, 0] = 1.0


# ----------------------------------------------------------------------------------------------
# Pure math: NumPy/JAX parity, jit, vmap
# ----------------------------------------------------------------------------------------------


def _to_jax(model):
  return jax.tree_util.tree_map(jnp.asarray, model)


def test_pytree_leaves(default):
  leaves = jax.tree_util.tree_leaves(default)
  assert len(leaves) == len(model_lib.DATA_FIELDS)


def test_vertices_and_landmarks_numpy_jax_parity(default):
  rng = np.random.default_rng(0)
  shape = rng.normal(size=(2, default.num_identity)).astype(np.float32)
  expression = rng.uniform(0, 0.5, (2, default.num_expression)).astype(np.float32)
  jmodel = _to_jax(default)
  v_np = model_lib.vertices(default, shape, expression)
  v_jax = jax.jit(model_lib.vertices)(jmodel, jnp.asarray(shape), jnp.asarray(expression))
  np.testing.assert_allclose(np.asarray(v_jax), v_np, atol=1e-3)
  lm_np = model_lib.landmarks_3d(default, shape, expression)
  np.testing.assert_allclose(lm_np, v_np[:, default.landmark_vertex_ids], atol=1e-3)
  lm_jax = jax.jit(model_lib.landmarks_3d)(jmodel, jnp.asarray(shape), jnp.asarray(expression))
  np.testing.assert_allclose(np.asarray(lm_jax), lm_np, atol=1e-3)


def test_contour_selection_numpy_jax_jit_vmap(default):
  yaws = np.array([-80, -50, -20, 0, 20, 50, 80], np.float32)
  rotations = geometry.euler_to_matrix(np.zeros_like(yaws), np.deg2rad(yaws),
                                       np.zeros_like(yaws)).astype(np.float32)
  ids_np = model_lib.contour_vertex_ids(default, rotations)
  assert ids_np.shape == (7, 17) and ids_np.dtype == np.int32
  for k in range(len(yaws)):
    np.testing.assert_array_equal(model_lib.contour_vertex_ids(default, rotations[k]), ids_np[k])
  jmodel = _to_jax(default)
  ids_jit = jax.jit(model_lib.contour_vertex_ids)(jmodel, jnp.asarray(rotations))
  np.testing.assert_array_equal(np.asarray(ids_jit), ids_np)
  ids_vmap = jax.vmap(model_lib.contour_vertex_ids, in_axes=(None, 0))(
      jmodel, jnp.asarray(rotations))
  np.testing.assert_array_equal(np.asarray(ids_vmap), ids_np)
  ids_nojit = model_lib.contour_vertex_ids(jmodel, jnp.asarray(rotations))
  np.testing.assert_array_equal(np.asarray(ids_nojit), ids_np)
  # With a (batched) fitted mesh, too.
  verts = model_lib.vertices(default, np.zeros((7, default.num_identity), np.float32),
                             np.zeros((7, default.num_expression), np.float32))
  np.testing.assert_array_equal(model_lib.contour_vertex_ids(default, rotations, verts), ids_np)
  all_ids = jax.jit(model_lib.landmark_vertex_ids_for_pose)(jmodel, jnp.asarray(rotations))
  assert all_ids.shape == (7, 68)
  np.testing.assert_array_equal(np.asarray(all_ids)[:, :17], ids_np)
  np.testing.assert_array_equal(np.asarray(all_ids)[:, 17:],
                                np.broadcast_to(default.landmark_vertex_ids[17:], (7, 51)))


def test_landmarks_3d_with_pose_dependent_ids(default):
  rotations = np.stack([_rotation(0), _rotation(60)])
  ids = model_lib.landmark_vertex_ids_for_pose(default, rotations)
  shape = np.random.default_rng(0).normal(size=(2, default.num_identity)).astype(np.float32)
  expression = np.zeros((2, default.num_expression), np.float32)
  points = model_lib.landmarks_3d(default, shape, expression, ids)
  full = model_lib.vertices(default, shape, expression)
  np.testing.assert_allclose(points, np.take_along_axis(full, ids[..., None], axis=1), atol=1e-3)


# ----------------------------------------------------------------------------------------------
# Contour landmarks follow the silhouette
# ----------------------------------------------------------------------------------------------


def _camera_normals(model, rotation):
  return contour.vertex_normals(model.mean_vertices, model.triangles) @ rotation.T


@pytest.mark.parametrize("spec", ["default", "sfm"])
def test_contour_switches_to_silhouette_at_large_yaw(spec):
  model = loaders.default_face_model() if spec == "default" else loaders.load_face_model(
      require(SFM_NPZ) and "sfm")
  frontal = model.landmark_vertex_ids[:17]
  np.testing.assert_array_equal(model_lib.contour_vertex_ids(model, _rotation(0)), frontal)
  for yaw in (45.0, 60.0, -45.0, -60.0):
    rotation = _rotation(yaw)
    ids = model_lib.contour_vertex_ids(model, rotation)
    far = slice(9, 17) if yaw > 0 else slice(0, 8)    # positive yaw turns the subject's left away
    near = slice(0, 8) if yaw > 0 else slice(9, 17)
    np.testing.assert_array_equal(ids[near], frontal[near])
    assert np.sum(ids[far] != frontal[far]) >= 6
    normal_z = _camera_normals(model, rotation)[:, 2]
    # Chosen points lie on the self-occluding outline (normal perpendicular to the view)...
    assert np.mean(np.abs(normal_z[ids[far]])) < 0.15
    # ... and are outermost in the image among their candidates.
    projected = geometry.rotate(model.mean_vertices[model.contour_candidates[far]], rotation)
    chosen = geometry.rotate(model.mean_vertices[ids[far]], rotation)
    outward = np.sign(yaw)   # image direction of the far side: +x for positive yaw
    assert np.all(outward * chosen[:, 0] >= (outward * projected[..., 0]).max(axis=1) - 1e-3)


def test_contour_is_mirror_symmetric_and_roll_invariant(default):
  ids_left = model_lib.contour_vertex_ids(default, _rotation(55))
  ids_right = model_lib.contour_vertex_ids(default, _rotation(-55))
  left_points = default.mean_vertices[ids_left[9:]]
  right_points = default.mean_vertices[ids_right[:8][::-1]]
  np.testing.assert_allclose(left_points * [1, 1, 1], right_points * [-1, 1, 1], atol=1.0)
  # Roll (in-plane rotation) does not change which vertices are on the outline.
  ids_rolled = model_lib.contour_vertex_ids(default, _rotation(55, roll_deg=35.0))
  np.testing.assert_array_equal(ids_rolled, ids_left)


def test_contour_candidates_rows_march_inwards(default):
  v = default.mean_vertices
  rows = v[default.contour_candidates]                     # [17, M, 3]
  for j in (0, 3, 12, 16):
    assert abs(rows[j, -1, 0]) < abs(rows[j, 0, 0])         # towards the nose
    assert np.all(np.abs(rows[j, :, 1] - rows[j, 0, 1]) < 5.0)  # about the same height
  assert np.all(default.contour_candidates[8] == default.landmark_vertex_ids[8])


# ----------------------------------------------------------------------------------------------
# Albedo and comparisons
# ----------------------------------------------------------------------------------------------


def test_albedo_regions(default):
  a = default.albedo_mean
  v = default.mean_vertices
  lm = default.landmark_vertex_ids
  skin = a[lm[29]]                                         # nose bridge
  upper_lip = 0.5 * (v[lm[51]] + v[lm[62]])
  lips = a[np.argmin(np.sum((v - upper_lip) ** 2, axis=1))]
  assert lips[0] / lips[1] > 1.3 * skin[0] / skin[1]        # lips redder than skin
  socket = a[default.vertex_part == model_lib.PART_MOUTH_SOCKET].mean(axis=0)
  assert socket.sum() < 0.5 * skin.sum()
  eye = default.vertex_part == model_lib.PART_EYEBALL_LEFT
  front = np.flatnonzero(eye)[np.argmax(v[eye, 2])]
  assert a[front].sum() < 0.1                              # pupil dark
  assert a[np.flatnonzero(eye)].max(axis=0).min() > 0.5    # sclera bright
  brows = a[lm[19]].sum() < 0.6 * skin.sum()
  assert brows
  tone = np.zeros(default.num_albedo, np.float32)
  tone[0] = 2.0
  pale = model_lib.albedo(default, tone)[lm[29]].sum()
  dark = model_lib.albedo(default, -tone)[lm[29]].sum()
  assert pale > 2.5 * dark


def test_asset_albedo_is_in_sync_with_the_code(default):
  """The shipped albedo equals what albedo.py builds today (re-run the build script if not)."""
  from dff_jax.face_model.albedo import build_albedo_model
  mean, basis = build_albedo_model(default.mean_vertices, default.triangles, default.vertex_part,
                                   default.landmark_vertex_ids)
  np.testing.assert_allclose(default.albedo_mean, mean, atol=2e-3)
  np.testing.assert_allclose(default.albedo_basis, basis, atol=2e-3)


def test_landmarks_3d_gradients(default):
  from jax.test_util import check_grads
  jmodel = _to_jax(default)
  shape = jnp.asarray(np.random.default_rng(0).normal(size=default.num_identity), jnp.float32)
  expression = jnp.zeros(default.num_expression, jnp.float32)
  check_grads(lambda a, b: model_lib.landmarks_3d(jmodel, a, b), (shape, expression), order=1,
              modes=("rev",), atol=1e-2, rtol=1e-2)


def test_landmark_distance_ratio():
  require(SFM_NPZ)
  default = loaders.default_face_model()
  sfm = loaders.load_face_model("sfm")
  assert len(compare.FIXED_LANDMARKS) == 50
  assert compare.landmark_distance_ratio(sfm, sfm) < 1e-6
  assert compare.landmark_distance_ratio(default, sfm) <= 0.04


def test_bfm_loader_albedo_basis_and_every_guard(tmp_path, default):
  """The albedo basis is texPC scaled by texEV, in [0, 1] units; every malformed array is named
  in the error with what was expected (planted one at a time in the tiny BFM fixture)."""
  good = tmp_path / "good.mat"
  mat, keep_ids, _ = _bfm_fixture(good, default)
  n = len(keep_ids)
  bfm = loaders.load_face_model(good)
  for k in range(2):
    expected = (mat["texPC"][:, k] * mat["texEV"][k, 0] / 255.0).reshape(n, 3)
    np.testing.assert_allclose(bfm.albedo_basis[k], expected, atol=1e-6)
  np.testing.assert_allclose(bfm.identity_basis[0],
                             (mat["shapePC"][:, 0] * 60.0).reshape(n, 3), atol=1e-4)

  def fails(change, pattern):
    bad = dict(mat)
    change(bad)
    path = tmp_path / "bad.mat"
    scipy.io.savemat(path, bad)
    with pytest.raises(ValueError, match=r"bad\.mat.*" + pattern):   # the file is named
      loaders.load_face_model(path)

  fails(lambda m: m.update(shapeMU=m["shapeMU"][:-1]),
        rf"shapeMU has {3 * n - 1} values, expected 3 \* V")
  fails(lambda m: m.update(texMU=m["texMU"][:-3]), rf"texMU has shape \[{3 * n - 3}\], "
        rf"expected \[{3 * n}\]")
  fails(lambda m: m.update(texPC=m["texPC"][:, :1]), rf"texPC has shape \[{3 * n}, 1\], "
        rf"expected \[{3 * n}, 2\]")
  fails(lambda m: m.update(tl=m["tl"][:, :2]), r"tl has shape \[\d+, 2\], expected \[\*, 3\]")
  fails(lambda m: m.update(tl=m["tl"] - 1), rf"tl must hold 1-based vertex ids in \[1, {n}\]")
  fails(lambda m: m.update(tl=np.where(m["tl"] == m["tl"].max(), n + 1, m["tl"])),
        rf"tl must hold 1-based vertex ids in \[1, {n}\]")
  for key in ("shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV"):
    def poison(m, key=key):
      value = np.array(m[key], np.float64)
      value.flat[0] = np.nan
      m[key] = value
    fails(poison, rf"{key} contains NaN or infinite values")
  fails(lambda m: m.pop("texEV"), r"Basel Face Model 2009 .* lacks keys \['texEV'\]")
  with pytest.raises(ValueError, match="landmark_vertex_ids"):
    loaders.load_face_model(good, landmark_vertex_ids=np.arange(67))
  # Triangles given back to front come out facing the viewer (as the fixture's own winding).
  flipped = dict(mat, tl=mat["tl"][:, ::-1].copy())
  scipy.io.savemat(tmp_path / "flipped.mat", flipped)
  np.testing.assert_array_equal(loaders.load_face_model(tmp_path / "flipped.mat").triangles,
                                bfm.triangles)


def test_rebuilding_the_default_from_ict_gives_the_shipped_arrays(tmp_path):
  """build_default_model on ../shared's ICT Face Model Light, saved compact, holds exactly the
  arrays of the shipped asset (made once by the face_model_ict recipe): every step of the build
  (cm -> mm, blendshapes, the 60 strongest identity modes in order, triangle winding, contour
  candidates, landmarks, the seeded procedural albedo) is pinned by those bytes."""
  source = require(ICT_NPZ)
  model, energy, keep = loaders.build_default_model(source, 60)
  assert energy.shape == (100,) and len(keep) == 60
  assert np.all(np.diff(energy[keep]) <= 0)  # strongest first
  path = loaders.save_face_model(model, tmp_path / "face_model_ict.npz", compact=True)
  with np.load(path) as rebuilt, np.load(ROOT / "dff_jax" / "assets" / "face_model_ict.npz") as shipped:
    assert sorted(rebuilt.files) == sorted(shipped.files)
    for name in shipped.files:
      assert rebuilt[name].dtype == shipped[name].dtype, name
      np.testing.assert_array_equal(rebuilt[name], shipped[name], err_msg=name)


# ----------------------------------------------------------------------------------------------
# Pytree registration, namespaces, shapes (mutation-testing survivors)
# ----------------------------------------------------------------------------------------------


def test_pytree_registration_in_a_fresh_process():
  """In a new interpreter, importing the JAX support registers FaceModel as a pytree whose leaves
  are the array fields and whose name / expression names are static; registering again is a
  no-op (a second registration would raise in JAX)."""
  code = (
      "import jax, jax.numpy as jnp, numpy as np\n"
      "from dff_jax.face_model import jax_support, loaders\n"
      "from dff_jax.face_model import model as m\n"
      "m.register_pytree(); m.register_pytree()\n"
      "face = loaders.default_face_model()\n"
      "leaves, treedef = jax.tree_util.tree_flatten(face)\n"
      "assert len(leaves) == len(m.DATA_FIELDS) == 11, len(leaves)\n"
      "back = jax.tree_util.tree_unflatten(treedef, leaves)\n"
      "assert back.name == face.name and back.expression_names == face.expression_names\n"
      "total = jax.jit(lambda f: f.mean_vertices.sum())(face)\n"
      "np.testing.assert_allclose(float(total), face.mean_vertices.sum(), rtol=1e-4)\n"
      "print('ok')\n")
  model_lib.register_pytree()   # here too: already registered on import, so a no-op
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_each_argument_can_be_the_traced_one(default):
  """Under jit, any one argument may be the JAX one (the others NumPy): the functions pick the
  namespace from all of them, so they trace instead of failing on a tracer, and give the NumPy
  answer."""
  rng = np.random.default_rng(5)
  shape = rng.normal(size=(2, default.num_identity)).astype(np.float32)
  expression = rng.uniform(0, 0.5, (2, default.num_expression)).astype(np.float32)
  ids = default.landmark_vertex_ids[17:40]
  rotation = _rotation(50.0, 10.0, 5.0)
  verts = model_lib.vertices(default, shape[0], expression[0])
  albedo_coefficients = rng.normal(size=(2, default.num_albedo)).astype(np.float32)
  cases = {
      "landmarks_3d": (model_lib.landmarks_3d, (default, shape, expression, ids)),
      "albedo": (model_lib.albedo, (default, albedo_coefficients)),
      "contour_vertex_ids": (model_lib.contour_vertex_ids, (default, rotation, verts)),
      "landmark_vertex_ids_for_pose": (model_lib.landmark_vertex_ids_for_pose,
                                       (default, rotation, verts)),
  }
  for name, (function, args) in cases.items():
    expected = function(*args)
    for k in range(len(args)):
      def traced(x, k=k):
        return function(*args[:k], x, *args[k + 1:])
      value = args[k] if k else _to_jax(args[k])
      got = jax.jit(traced)(value)
      np.testing.assert_allclose(np.asarray(got), expected, atol=2e-3, err_msg=f"{name} arg {k}")


def test_albedo_is_clipped_to_the_unit_range(default):
  """Coefficients far outside the model's range give colours clipped to exactly [0, 1], and equal
  the unclipped linear model wherever that is inside."""
  coefficients = np.full((default.num_albedo,), 40.0, np.float32)
  coefficients[1::2] = -40.0
  raw = default.albedo_mean + np.einsum("k,kvd->vd", coefficients, default.albedo_basis)
  assert raw.min() < -0.1 and raw.max() > 1.1
  colours = model_lib.albedo(default, coefficients)
  np.testing.assert_allclose(colours, np.clip(raw, 0.0, 1.0), atol=1e-5)
  assert colours.min() == 0.0 and colours.max() == 1.0


def test_contour_choice_is_roll_invariant_for_any_roll(default):
  """Roll is an in-plane rotation: the outline vertices of a 50-degree yaw are the same for a
  roll of -60, 120 and 170 degrees (the image direction of the model's x axis then points down,
  left or up-left, not right)."""
  yaw = geometry.euler_to_matrix(0.0, np.deg2rad(50.0), 0.0)
  expected = model_lib.contour_vertex_ids(default, yaw.astype(np.float32))
  for roll_deg in (-60.0, 120.0, 170.0):
    c, s = np.cos(np.deg2rad(roll_deg)), np.sin(np.deg2rad(roll_deg))
    in_plane = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    rotation = (in_plane @ yaw).astype(np.float32)
    np.testing.assert_array_equal(model_lib.contour_vertex_ids(default, rotation), expected,
                                  err_msg=f"roll {roll_deg}")
    np.testing.assert_array_equal(
        np.asarray(jax.jit(model_lib.contour_vertex_ids)(_to_jax(default), rotation)), expected)


def test_contour_follows_the_given_mesh(default):
  """A mesh whose candidate 5 of jaw row 12 sticks out 40 mm sideways: turned so that side is
  away from the camera, that candidate is the outline (it is not for the mean face), for a single
  rotation, a batch, and through landmark_vertex_ids_for_pose."""
  row, column = 12, 5
  mesh = default.mean_vertices.copy()
  mesh[default.contour_candidates[row, column], 0] += 40.0
  rotation = _rotation(55.0)
  mean_ids = model_lib.contour_vertex_ids(default, rotation)
  planted = default.contour_candidates[row, column]
  assert mean_ids[row] != planted
  np.testing.assert_array_equal(model_lib.contour_vertex_ids(default, rotation, mesh)[row], planted)
  ids = model_lib.landmark_vertex_ids_for_pose(default, rotation, mesh)
  assert ids.shape == (68,) and ids[row] == planted
  np.testing.assert_array_equal(np.delete(ids, row), np.delete(
      model_lib.landmark_vertex_ids_for_pose(default, rotation), row))
  batched = model_lib.landmark_vertex_ids_for_pose(
      default, np.stack([rotation, rotation]), np.stack([default.mean_vertices, mesh]))
  assert batched.shape == (2, 68)
  assert batched[0, row] == mean_ids[row] and batched[1, row] == planted


def test_landmark_vertex_ids_for_pose_shapes(default):
  """[3, 3] -> [68]; [2, 3, 3] -> [2, 68]; [2, 3, 2, 3, 3]-style leading axes -> [..., 68]: the
  jaw from the contour, the rest the fixed landmark ids."""
  rotations = np.stack([_rotation(y) for y in (-70.0, -30.0, 0.0, 30.0, 70.0, 85.0)])
  for shape in ((), (6,), (2, 3)):
    r = rotations[0] if shape == () else rotations.reshape(shape + (3, 3))
    ids = model_lib.landmark_vertex_ids_for_pose(default, r)
    assert ids.shape == shape + (68,)
    np.testing.assert_array_equal(ids[..., :17], model_lib.contour_vertex_ids(default, r))
    np.testing.assert_array_equal(ids[..., 17:], np.broadcast_to(default.landmark_vertex_ids[17:],
                                                                 shape + (51,)))
    jit_ids = jax.jit(model_lib.landmark_vertex_ids_for_pose)(_to_jax(default), jnp.asarray(r))
    np.testing.assert_array_equal(np.asarray(jit_ids), ids)


# ----------------------------------------------------------------------------------------------
# Loading and saving: names, dtypes, messages that say what is wrong and where
# ----------------------------------------------------------------------------------------------


def test_default_spec_and_name():
  """``load_face_model()`` is the embedded default, named ``ict_default``; a path given as a
  string loads that file under its own name."""
  model = loaders.load_face_model()
  assert model.name == "ict_default"
  np.testing.assert_array_equal(model.mean_vertices, loaders.default_face_model().mean_vertices)
  assert loaders.load_face_model(str(loaders.DEFAULT_ASSET)).name == "ict_default"  # file's name


def test_shorthand_without_shared_says_what_to_do(tmp_path, monkeypatch):
  """A shorthand whose file is absent raises FileNotFoundError naming the file, $DFF_SHARED_DIR
  and the embedded default."""
  monkeypatch.setitem(loaders.SHORTHANDS, "sfm", tmp_path / "absent" / "sfm.npz")
  with pytest.raises(FileNotFoundError, match=r"absent.*DFF_SHARED_DIR.*load_face_model\('default'\)"):
    loaders.load_face_model("sfm")


def test_shorthand_name(tmp_path, monkeypatch):
  """A model loaded by shorthand carries the shorthand as its name."""
  path = loaders.save_face_model(_tiny_model(np.random.default_rng(2)), tmp_path / "m.npz")
  monkeypatch.setitem(loaders.SHORTHANDS, "ict", path)
  assert loaders.load_face_model("ict").name == "ict"


def test_save_into_a_new_folder_and_types_on_load(tmp_path):
  """save_face_model creates missing folders; loading our layout gives float32 / int32 arrays
  whatever the file stored (int64 ids, float64 bases), and the expression names back."""
  model = _tiny_model(np.random.default_rng(3))
  path = loaders.save_face_model(model, tmp_path / "a" / "b" / "m.npz")
  assert path.exists()
  with np.load(path) as data:
    arrays = {k: data[k] for k in data.files}
  for field in model_lib.DATA_FIELDS:
    arrays[field] = arrays[field].astype(np.int64 if arrays[field].dtype.kind == "i"
                                         else np.float64)
  np.savez(tmp_path / "wide.npz", **arrays)
  loaded = loaders.load_face_model(tmp_path / "wide.npz")
  for field in model_lib.DATA_FIELDS:
    value = getattr(loaded, field)
    assert value.dtype == (np.int32 if field in loaders._INT_FIELDS else np.float32), field
  assert loaded.expression_names == ("e0", "e1")


def test_bad_models_are_refused_with_the_path_and_the_problem(tmp_path):
  """Each inconsistency is a ValueError naming the file and what is wrong (saving validates too)."""
  good = _tiny_model(np.random.default_rng(4))
  v = good.mean_vertices.shape[0]
  ids = good.landmark_vertex_ids.copy()
  cases = {
      "negative_id": (good.replace(triangles=np.where(np.arange(90).reshape(30, 3) == 4, -1,
                                                      good.triangles)),
                      r"negative_id.npz: triangles must hold vertex ids in \[0, 24\), found \[-1,"),
      "id_equal_to_v": (good.replace(triangles=np.where(np.arange(90).reshape(30, 3) == 4, v,
                                                        good.triangles)),
                        r"id_equal_to_v.npz: triangles must hold vertex ids in \[0, 24\), found "
                        r"\[\d+, 24\]"),
      "contour": (good.replace(contour_candidates=np.roll(good.contour_candidates, 1, axis=1)),
                  r"contour.npz: contour_candidates\[:, 0\] must equal landmark_vertex_ids\[:17\]"),
      "names": (good.replace(expression_names=("only_one",)),
                r"names.npz: 1 expression_names for 2 expression modes"),
      "shape": (good.replace(vertex_part=good.vertex_part[:-1]),
                r"shape.npz: vertex_part has shape \[23\], expected \[24\]"),
  }
  assert ids.min() >= 0
  for stem, (bad, message) in cases.items():
    with pytest.raises(ValueError, match=message):
      loaders.save_face_model(bad, tmp_path / f"{stem}.npz")
  # No expression names at all is allowed (a model without named modes).
  loaders.save_face_model(good.replace(expression_names=()), tmp_path / "unnamed.npz")


def test_loading_refuses_bad_files_with_the_path(tmp_path):
  """Loading: a wrong format version, our layout lacking fields, an npz holding Python objects
  (never unpickled) and non-finite bases each name the file and the problem."""
  model = _tiny_model(np.random.default_rng(6))
  path = loaders.save_face_model(model, tmp_path / "m.npz")
  with np.load(path) as data:
    arrays = {k: data[k] for k in data.files}
  np.savez(tmp_path / "v9.npz", **{**arrays, "format_version": np.asarray(9)})
  with pytest.raises(ValueError, match=r"v9.npz: format_version 9 is not supported \(this code "
                                       r"reads 1\)"):
    loaders.load_face_model(tmp_path / "v9.npz")
  np.savez(tmp_path / "lacking.npz", **{k: a for k, a in arrays.items() if k != "albedo_basis"})
  with pytest.raises(ValueError, match=r"lacking.npz looks like the dff_jax \(ours\) layout but "
                                       r"lacks keys \['albedo_basis'\]"):
    loaders.load_face_model(tmp_path / "lacking.npz")
  np.savez(tmp_path / "objects.npz", **{**arrays, "name": np.array([{"a": 1}], dtype=object)})
  with pytest.raises(ValueError, match=r"objects.npz is not a readable .npz face model"):
    loaders.load_face_model(tmp_path / "objects.npz")
  # Our layout whose contour candidates disagree with the landmarks: refused on load, named.
  np.savez(tmp_path / "contour.npz", **{**arrays, "contour_candidates": np.roll(
      arrays["contour_candidates"], 1, axis=1)})
  with pytest.raises(ValueError, match=r"contour.npz: contour_candidates\[:, 0\] must equal"):
    loaders.load_face_model(tmp_path / "contour.npz")
  # No known layout: the message lists each layout's keys.
  np.savez(tmp_path / "unknown.npz", foo=np.zeros(2))
  with pytest.raises(ValueError, match=r"unknown.npz has keys \['foo'\], which match no known "
                                       r"face-model layout: expected ours \(format_version, "
                                       r"mean_vertices, identity_basis, .*\), ICT \(mean_vertices, "
                                       r"identity_modes, expression_modes, .*\) or SFM "
                                       r"\(mean_vertices, shape_basis, shape_eigenvalues, "):
    loaders.load_face_model(tmp_path / "unknown.npz")
  # The SFM layout with a negative variance.
  sfm = dict(mean_vertices=model.mean_vertices, shape_basis=model.identity_basis,
             shape_eigenvalues=np.array([1.0, -1.0, 1.0]), expression_basis=model.expression_basis,
             expression_names=np.array(["a", "b"]), triangles=model.triangles,
             landmark_vertex_ids=model.landmark_vertex_ids,
             right_contour_vertex_ids=np.arange(5), left_contour_vertex_ids=np.arange(5, 10))
  np.savez(tmp_path / "sfm_bad.npz", **sfm)
  with pytest.raises(ValueError, match=r"sfm_bad.npz: shape_eigenvalues must be finite variances "
                                       r">= 0"):
    loaders.load_face_model(tmp_path / "sfm_bad.npz")
  for field, what in (("identity_modes", "identity basis"), ("expression_modes",
                                                            "expression basis")):
    ict = dict(mean_vertices=model.mean_vertices, identity_modes=model.identity_basis.copy(),
               expression_modes=model.expression_basis.copy(), expression_names=np.array(["a", "b"]),
               triangles=model.triangles, vertex_part=model.vertex_part,
               landmark_vertex_ids=model.landmark_vertex_ids)
    ict[field][0, 0, 0] = np.inf
    np.savez(tmp_path / f"ict_{field}.npz", **ict)
    with pytest.raises(ValueError, match=rf"ict_{field}.npz: the {what} contains NaN or infinite"):
      loaders.load_face_model(tmp_path / f"ict_{field}.npz")
