"""Tests of the fitting commands: fit_landmarks, compare_face_models, demo (tiny fixtures)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SFM_NPZ, require
from data_pipeline import readers
from dff_jax import demo, image_io
from dff_jax.alignment import fit_files
from dff_jax.evaluation import face_models


@pytest.fixture(scope="module")
def default_model():
  return fit_files.load_model("default")


@pytest.fixture(scope="module")
def synthetic_face(default_model):
  return face_models.synthesise_landmarks(default_model, 1, seed=3, image_size=128.0)


def _run(*args):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_fit_landmarks_writes_json_and_overlay(tmp_path, default_model, synthetic_face):
  landmarks = synthetic_face["landmarks_px"][0]
  pts = tmp_path / "face.pts"
  readers.write_pts(pts, landmarks)
  image = np.full((128, 128, 3), 90, np.uint8)
  image_path = tmp_path / "face.png"
  image_io.write_png_atomic(image_path, image)
  out = tmp_path / "out"
  document = fit_files.fit_landmarks_file(pts, out, image_path=image_path)
  written = json.loads((out / "face.json").read_text())
  assert written == json.loads(json.dumps(document))
  assert np.asarray(written["landmarks_px"]).shape == (68, 2)
  assert set(written["pose"]) == {"yaw_deg", "pitch_deg", "roll_deg", "scale", "translation_px"}
  assert len(written["pose"]["translation_px"]) == 2
  assert len(written["shape_coefficients"]) == default_model.num_identity
  assert len(written["expression_coefficients"]) == default_model.num_expression
  assert written["nme_inter_ocular"] < 0.04
  assert abs(written["pose"]["yaw_deg"] - np.degrees(synthetic_face["yaw_rad"][0])) < 4.0
  overlay = image_io.read_image(out / "face_overlay.png")
  assert overlay.shape == (128, 128, 3) and np.any(overlay != 90)
  assert sorted(p.name for p in out.iterdir()) == ["face.json", "face_overlay.png"]


def test_fit_landmarks_bad_content_raises_value_error(tmp_path):
  bad = tmp_path / "bad.npy"
  np.save(bad, np.full((68, 2), np.nan, np.float32))
  with pytest.raises(ValueError):
    fit_files.fit_landmarks_file(bad, tmp_path / "out")
  assert not (tmp_path / "out" / "bad.json").exists()


def test_fit_landmarks_missing_file_exits_with_one_line(tmp_path):
  out = tmp_path / "out"
  proc = _run("-m", "experiments.fit_landmarks", f"--landmarks={tmp_path / 'missing.pts'}",
              f"--out_dir={out}")
  assert proc.returncode != 0
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stderr
  assert "missing.pts" in lines[0] and "does not exist" in lines[0]
  assert not out.exists() or not any(out.iterdir())


def test_demo_runs(tmp_path):
  report = demo.run_fit_demo(tmp_path, seed=1, noise_px=0.5)
  assert set(report["true_pose"]) == set(report["fitted_pose"])
  assert abs(report["true_pose"]["yaw_deg"] - report["fitted_pose"]["yaw_deg"]) < 5.0
  assert report["nme_vs_true_landmarks"] < 0.04
  picture = image_io.read_image(tmp_path / "demo_fit.png")
  assert picture.shape[0] >= demo.IMAGE_SIZE and picture.shape[1] >= 2 * demo.IMAGE_SIZE
  assert json.loads((tmp_path / "demo_fit.json").read_text())["seed"] == 1


def test_compare_face_models_figures(default_model):
  from dff_jax.face_model import compare  # pylint: disable=g-import-not-at-top
  sfm = fit_files.load_model(str(require(SFM_NPZ)))
  nme = face_models.synthetic_fit_nme(default_model, sfm, num_faces=6, seed=0,
                                              contours=("nearest",))
  assert 0.0 < nme["nearest"] < 0.05
  assert 0.0 < compare.landmark_distance_ratio(default_model, sfm) < 0.1
  grid, labels = face_models.model_grid(default_model, cell=40)
  assert grid.dtype == np.uint8 and grid.shape[0] > 80 and len(labels) == 10
  assert grid.std() > 5  # faces were drawn, not a blank canvas
