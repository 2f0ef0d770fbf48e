"""Tests for data_pipeline.readers with fixtures written here (plus one optional real file)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from data_pipeline import readers

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
AFLW_DIR = SHARED / "datasets" / "aflw2000_3d_dev"


def _landmarks(seed=0, n=68):
  rng = np.random.default_rng(seed)
  return rng.uniform(10, 200, (n, 2)).astype(np.float32)


def _pts_text(points_one_based, declared=None):
  lines = "\n".join(f"{x:.3f} {y:.3f}" for x, y in points_one_based)
  n = len(points_one_based) if declared is None else declared
  return f"version: 1\nn_points:  {n}\n{{\n{lines}\n}}\n"


# ----------------------------------------------------------------------------------------------
# Coordinate conventions
# ----------------------------------------------------------------------------------------------


def test_one_based_conversion_is_half_pixel():
  # The first pixel's centre is (1, 1) in 1-based files and (0.5, 0.5) in ours.
  np.testing.assert_allclose(readers.one_based_to_pixel_centres(np.array([[1.0, 1.0]])),
                             [[0.5, 0.5]])
  np.testing.assert_allclose(readers.one_based_to_pixel_centres(np.array([[450.0, 2.0]])),
                             [[449.5, 1.5]])
  points = _landmarks()
  np.testing.assert_allclose(
      readers.one_based_to_pixel_centres(readers.pixel_centres_to_one_based(points)), points,
      atol=1e-5)


def test_menpo_conversion_swaps_axes_and_shifts():
  # menpo (y, x) with pixel centres at integers: pixel row 2, column 5 is (2, 5) -> ours (5.5, 2.5).
  np.testing.assert_allclose(readers.menpo_to_pixel_centres(np.array([[2.0, 5.0]])), [[5.5, 2.5]])


# ----------------------------------------------------------------------------------------------
# .pts
# ----------------------------------------------------------------------------------------------


def test_read_pts_converts_one_based(tmp_path):
  ours = _landmarks()
  path = tmp_path / "face.pts"
  path.write_text(_pts_text(ours + 0.5))
  points = readers.read_pts(path)
  assert points.shape == (68, 2) and points.dtype == np.float32
  np.testing.assert_allclose(points, ours, atol=1e-3)
  np.testing.assert_allclose(readers.read_landmarks(path), ours, atol=1e-3)


def test_read_pts_tolerates_bom_crlf_and_blank_lines(tmp_path):
  ours = _landmarks(1)
  path = tmp_path / "face.pts"
  path.write_bytes(b"\xef\xbb\xbf" + _pts_text(ours + 0.5).replace("\n", "\r\n\r\n").encode())
  np.testing.assert_allclose(readers.read_pts(path), ours, atol=1e-3)


def test_write_pts_round_trip(tmp_path):
  ours = _landmarks(2)
  path = tmp_path / "out.pts"
  readers.write_pts(path, ours)
  text = path.read_text()
  assert text.startswith("version: 1\nn_points: 68\n{\n") and text.rstrip().endswith("}")
  first = [float(v) for v in text.splitlines()[3].split()]
  np.testing.assert_allclose(first, ours[0] + 0.5, atol=1e-5)  # 1-based on disk.
  np.testing.assert_allclose(readers.read_pts(path), ours, atol=1e-5)


@pytest.mark.parametrize("content, message", [
    (_pts_text(np.ones((67, 2))), "expected 68 landmarks"),
    (_pts_text(np.ones((68, 2)), declared=70), "n_points: 70"),
    ("version: 1\nn_points: 68\n1 2\n", r"no '\{'"),
    (_pts_text(np.ones((68, 2))).replace("1.000 1.000", "1.0 abc", 1), "cannot parse"),
    (_pts_text(np.ones((68, 2))).replace("1.000 1.000", "nan 1.0", 1), "NaN or infinite"),
    (_pts_text(np.ones((68, 2))).replace("1.000 1.000", "inf 1.0", 1), "NaN or infinite"),
])
def test_read_pts_errors_name_file_and_problem(tmp_path, content, message):
  path = tmp_path / "bad.pts"
  path.write_text(content)
  with pytest.raises(ValueError, match=message) as info:
    readers.read_pts(path)
  assert str(path) in str(info.value)
  assert isinstance(info.value, readers.LandmarkReadError)


def test_missing_file_directory_and_binary(tmp_path):
  with pytest.raises(ValueError, match="not found") as info:
    readers.read_landmarks(tmp_path / "nope.pts")
  assert "nope.pts" in str(info.value)
  folder = tmp_path / "dir.pts"
  folder.mkdir()
  with pytest.raises(ValueError, match="not a regular file"):
    readers.read_landmarks(folder)
  binary = tmp_path / "binary.pts"
  binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
  with pytest.raises(ValueError, match="not a text file"):
    readers.read_landmarks(binary)
  with pytest.raises(ValueError, match="unsupported landmark file extension"):
    readers.read_landmarks(tmp_path / "face.txt")


# ----------------------------------------------------------------------------------------------
# .ljson, .json, .npy
# ----------------------------------------------------------------------------------------------


def _menpo_points(ours):
  return [[float(y) - 0.5, float(x) - 0.5] for x, y in ours]


@pytest.mark.parametrize("version", [1, 2, 3])
def test_read_ljson_versions(tmp_path, version):
  ours = _landmarks(3)
  points = _menpo_points(ours)
  if version == 1:
    document = {"version": 1, "groups": [
        {"label": "jaw", "landmarks": [{"point": p} for p in points[:17]]},
        {"label": "rest", "landmarks": [{"point": p} for p in points[17:]]}]}
  elif version == 2:
    document = {"version": 2, "labels": [], "landmarks": {"points": points}}
  else:
    document = {"version": 3, "groups": {
        "LJSON": {"labels": [], "landmarks": {"points": points}},
        "bbox": {"labels": [], "landmarks": {"points": points[:4]}}}}
  path = tmp_path / "face.ljson"
  path.write_text(json.dumps(document))
  np.testing.assert_allclose(readers.read_landmarks(path), ours, atol=1e-4)


def test_read_ljson_errors(tmp_path):
  points = _menpo_points(_landmarks(4))
  points[3] = [None, None]
  path = tmp_path / "missing.ljson"
  path.write_text(json.dumps({"version": 2, "labels": [], "landmarks": {"points": points}}))
  with pytest.raises(ValueError, match=r"landmarks \[3\] have NaN"):
    readers.read_landmarks(path)
  path.write_text(json.dumps({"version": 7, "landmarks": {"points": []}}))
  with pytest.raises(ValueError, match="unknown LJSON version 7"):
    readers.read_landmarks(path)
  path.write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    readers.read_landmarks(path)
  path.write_text(json.dumps({"version": 2, "landmarks": {"pts": []}}))
  with pytest.raises(ValueError, match="malformed LJSON"):
    readers.read_landmarks(path)


def test_read_json_and_npy_in_our_convention(tmp_path):
  ours = _landmarks(5)
  bare = tmp_path / "bare.json"
  bare.write_text(json.dumps(ours.tolist()))
  wrapped = tmp_path / "wrapped.json"
  wrapped.write_text(json.dumps({"landmarks_px": ours.tolist(), "image": "x.jpg"}))
  array = tmp_path / "array.npy"
  np.save(array, ours)
  for path in (bare, wrapped, array):
    points = readers.read_landmarks(path)
    assert points.dtype == np.float32
    np.testing.assert_allclose(points, ours, atol=1e-6)
  np.save(array, ours[:, :1])
  with pytest.raises(ValueError, match=r"shape \[N, 2\]"):
    readers.read_landmarks(array)
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"points": []}))
  with pytest.raises(ValueError, match="no 'landmarks_px'"):
    readers.read_landmarks(bad)
  garbage = tmp_path / "garbage.npy"
  garbage.write_text("hello")
  with pytest.raises(ValueError, match="not a readable .npy"):
    readers.read_landmarks(garbage)


# ----------------------------------------------------------------------------------------------
# AFLW2000-3D .mat
# ----------------------------------------------------------------------------------------------


def _write_aflw_mat(path, ours, pose):
  pt3d = np.concatenate([(ours + 0.5).T, np.linspace(-50, 50, 68)[None]], 0)
  scipy.io.savemat(str(path), {"pt3d_68": pt3d, "Pose_Para": np.asarray(pose, float)[None]})


def test_read_aflw2000_synthetic(tmp_path):
  ours = _landmarks(6)
  mat = tmp_path / "image00001.mat"
  _write_aflw_mat(mat, ours, [0.1, -0.5, 0.2, 200.0, 210.0, -40.0, 1e-3])
  (tmp_path / "image00001.jpg").write_bytes(b"")
  annotation = readers.read_aflw2000(mat)
  np.testing.assert_allclose(annotation.landmarks_px, ours, atol=1e-4)
  assert annotation.landmarks_px.dtype == np.float32
  assert annotation.landmarks_depth.shape == (68,)
  assert annotation.file_pose_rad == pytest.approx((0.1, -0.5, 0.2))
  # 3DDFA angles: small rotations flip sign in our convention; large ones mix (transpose).
  assert annotation.yaw_rad == pytest.approx(0.5, abs=0.05)
  assert annotation.pitch_rad == pytest.approx(-0.1, abs=0.15)
  assert annotation.roll_rad == pytest.approx(-0.2, abs=0.15)
  assert annotation.yaw_deg == pytest.approx(math.degrees(annotation.yaw_rad))
  assert annotation.pose_deg[1] == pytest.approx(annotation.yaw_deg)
  assert annotation.scale == pytest.approx(1e-3)
  assert annotation.image_path == tmp_path / "image00001.jpg"
  np.testing.assert_allclose(readers.read_landmarks(mat), ours, atol=1e-4)


def test_file_pose_to_ours_is_transposed_rotation():
  from dff_jax import geometry
  angles = (0.3, 0.9, -0.4)
  ours = readers.file_pose_to_ours(*angles)
  np.testing.assert_allclose(geometry.euler_to_matrix(*ours),
                             geometry.euler_to_matrix(*angles).T, atol=1e-12)


def test_read_aflw2000_errors(tmp_path):
  mat = tmp_path / "bad.mat"
  scipy.io.savemat(str(mat), {"pt3d_68": np.ones((3, 21))})
  with pytest.raises(ValueError, match="no 'Pose_Para'"):
    readers.read_aflw2000(mat)
  scipy.io.savemat(str(mat), {"pt3d_68": np.ones((3, 21)), "Pose_Para": np.zeros((1, 7))})
  with pytest.raises(ValueError, match="expected 68 landmarks"):
    readers.read_aflw2000(mat)
  text = tmp_path / "text.mat"
  text.write_text("not a mat file")
  with pytest.raises(ValueError, match="not a readable MATLAB") as info:
    readers.read_landmarks(text)
  assert str(text) in str(info.value)


# ----------------------------------------------------------------------------------------------
# Folders
# ----------------------------------------------------------------------------------------------


def test_list_300w_and_aflw2000(tmp_path):
  (tmp_path / "helen" / "trainset").mkdir(parents=True)
  for stem in ("helen/trainset/1", "helen/trainset/2", "afw_3"):
    (tmp_path / f"{stem}.jpg").write_bytes(b"")
    (tmp_path / f"{stem}.pts").write_text(_pts_text(_landmarks() + 0.5))
  (tmp_path / "lonely.png").write_bytes(b"")  # no annotation: skipped.
  pairs = readers.list_300w(tmp_path)
  assert [p[0].relative_to(tmp_path).as_posix() for p in pairs] == [
      "afw_3.jpg", "helen/trainset/1.jpg", "helen/trainset/2.jpg"]
  assert all(pts.suffix == ".pts" and pts.stem == image.stem for image, pts in pairs)
  assert len(readers.list_300w(tmp_path, recursive=False)) == 1
  aflw = tmp_path / "aflw"
  aflw.mkdir()
  for i in (2, 1):
    (aflw / f"image0000{i}.jpg").write_bytes(b"")
    _write_aflw_mat(aflw / f"image0000{i}.mat", _landmarks(), [0.0] * 6 + [1.0])
  assert [p[1].name for p in readers.list_aflw2000(aflw)] == ["image00001.mat", "image00002.mat"]
  with pytest.raises(ValueError, match="no image with a same-stem .mat"):
    readers.list_aflw2000(tmp_path / "helen")
  with pytest.raises(ValueError, match="data folder not found"):
    readers.list_300w(tmp_path / "missing")


def test_readers_do_not_import_jax():
  code = ("import sys, data_pipeline.readers as r; r.file_pose_to_ours(0.1, 0.2, 0.3); "
          "assert 'jax' not in sys.modules, 'jax imported'")
  subprocess.run([sys.executable, "-c", code], check=True,
                 cwd=Path(__file__).resolve().parents[1])


# ----------------------------------------------------------------------------------------------
# Real data (optional)
# ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not AFLW_DIR.is_dir(), reason="../shared/datasets/aflw2000_3d_dev is absent")
def test_real_aflw2000_files():
  pairs = readers.list_aflw2000(AFLW_DIR)
  assert len(pairs) >= 10
  annotations = [readers.read_aflw2000(mat) for _, mat in pairs[:40]]
  first = annotations[0]
  assert first.image_path == pairs[0][0]
  assert first.landmarks_px.shape == (68, 2) and first.landmarks_px.dtype == np.float32
  for a in annotations:
    assert abs(a.yaw_deg) <= 120.0
    # Our sign convention: positive yaw puts the nose tip (30) right of the jaw-ends' midpoint.
    nose_offset = a.landmarks_px[30, 0] - (a.landmarks_px[0, 0] + a.landmarks_px[16, 0]) / 2
    if abs(a.yaw_deg) > 15:
      assert np.sign(nose_offset) == np.sign(a.yaw_rad), a.mat_path
