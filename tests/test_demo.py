"""The demo on the shipped defaults: the DFF encoder and cascade align the astronaut portrait.

Reference points were placed by hand on ``experiments/assets/astronaut.jpg`` (image pixels, read
off a 10-px grid; about +-2 px): the two eye centres, the nose tip, the mouth centre and the chin.
The inter-ocular distance is ~42 px; every aligned point must lie within 6 px (0.15 of it).
"""

import json

import numpy as np
import pytest

from experiments import demo, fit_landmarks

REFERENCE_PX = demo.REFERENCE_POINTS_PX
TOLERANCE_PX = 6.0


def test_demo_aligns_the_portrait_with_the_shipped_defaults(tmp_path):
  report = demo.run_demo(tmp_path)
  document = json.loads((tmp_path / "astronaut.json").read_text())
  assert document["features"] == "dff"
  assert json.loads((tmp_path / "demo.json").read_text())["alignment"]["box"] == document["box"]
  landmarks = np.asarray(document["landmarks_px"])
  assert landmarks.shape == (68, 2) and np.all(np.isfinite(landmarks))
  errors = {name: float(np.linalg.norm(landmarks[rows].mean(0) - np.asarray(point)))
            for name, (point, rows) in REFERENCE_PX.items()}
  assert max(errors.values()) < TOLERANCE_PX, errors
  assert report["alignment"]["reference_point_errors_px"] == pytest.approx(errors, abs=1e-3)
  # A frontal portrait: small yaw and roll, (almost) every landmark visible.
  assert abs(document["pose"]["yaw_deg"]) < 15 and abs(document["pose"]["roll_deg"]) < 10
  assert report["alignment"]["visible_landmarks"] >= 64
  overlay = fit_landmarks.read_image_rgb(tmp_path / "astronaut_overlay.png")
  assert overlay.shape == (512, 512, 3)
  assert (tmp_path / "demo_fit.png").exists()
