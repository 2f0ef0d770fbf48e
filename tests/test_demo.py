"""The demo on the shipped defaults: the DFF encoder and cascade align the astronaut portrait.

Reference points were placed by hand on ``experiments/assets/astronaut.jpg`` (image pixels, read
off a 10-px grid; about +-2 px): the two eye centres, the nose tip, the mouth centre and the chin.
The inter-ocular distance is ~42 px; every aligned point must lie within 6 px (0.15 of it).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from dff_jax import demo, image_io

REFERENCE_PX = demo.REFERENCE_POINTS_PX
TOLERANCE_PX = 6.0


def test_demo_aligns_the_portrait_with_the_shipped_defaults(tmp_path):
  """``python -m experiments.demo`` as ``make demo`` runs it (no JAX_PLATFORMS set): a short
  human summary on stdout, nothing on stderr (no backend-probe log lines), the JSON in files."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  proc = subprocess.run([sys.executable, "-m", "experiments.demo", f"--out_dir={tmp_path}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Unable to initialize backend" not in proc.stderr
  assert proc.stderr.strip() == "", proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert 4 <= len(lines) <= 8 and not proc.stdout.lstrip().startswith("{"), proc.stdout
  assert lines[0].startswith("demo: aligned 1 face in experiments/assets/astronaut.jpg")
  assert any(l.startswith("pictures:") and "astronaut_overlay.png" in l and "demo_fit.png" in l
             for l in lines), proc.stdout
  assert any(l.startswith("JSON:") and "demo.json" in l for l in lines), proc.stdout
  report = json.loads((tmp_path / "demo.json").read_text())
  document = json.loads((tmp_path / "astronaut.json").read_text())
  assert document["features"] == "dff" and document["size_wh"] == [512, 512]
  assert len(document["faces"]) == 1 and document["box_source"] == "given"
  face = document["faces"][0]
  assert json.loads((tmp_path / "demo.json").read_text())["alignment"]["box"] == face["box"]
  landmarks = np.asarray(face["landmarks_px"])
  assert landmarks.shape == (68, 2) and np.all(np.isfinite(landmarks))
  errors = {name: float(np.linalg.norm(landmarks[rows].mean(0) - np.asarray(point)))
            for name, (point, rows) in REFERENCE_PX.items()}
  assert max(errors.values()) < TOLERANCE_PX, errors
  assert report["alignment"]["reference_point_errors_px"] == pytest.approx(errors, abs=1e-3)
  # A frontal portrait: small yaw and roll, (almost) every landmark visible.
  assert abs(face["pose"]["yaw_deg"]) < 15 and abs(face["pose"]["roll_deg"]) < 10
  assert report["alignment"]["visible_landmarks"] >= 64
  overlay = image_io.read_image(tmp_path / "astronaut_overlay.png")
  assert overlay.shape == (512, 512, 3)
  assert (tmp_path / "demo_fit.png").exists()
