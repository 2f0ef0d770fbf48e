"""Tests of the feature commands: extract_features, show_features, eval_matching.

A tiny DFF encoder is trained once per session (the ``tiny_bundle`` fixture in conftest.py,
experiments/configs/dff_tiny.py, a few seconds) and exported as an inference bundle; the commands
run on tiny inputs with it.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SFM_NPZ
from dff_jax import geometry
from dff_jax import image_io
from dff_jax.evaluation import matching as matching_eval
from dff_jax import descriptor_maps
from dff_jax import feature_figures as show_features

ASTRONAUT = ROOT / "experiments" / "assets" / "astronaut.jpg"
ASTRONAUT_BOX = np.asarray(json.loads((ROOT / "experiments" / "assets" / "astronaut.json")
                                      .read_text())["box"], np.float32)


def _run(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _one_error_line(proc, *needles):
  assert proc.returncode != 0, proc.stdout
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stderr
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


@pytest.fixture(scope="session")
def tiny_model(tiny_bundle):
  return descriptor_maps.load_dff(tiny_bundle)


@pytest.fixture()
def small_image(tmp_path):
  """A 40 (high) x 60 (wide) PNG with some structure."""
  y, x = np.mgrid[0:40, 0:60]
  image = np.stack([x * 4, y * 6, (x * y) % 255], axis=-1).astype(np.uint8)
  path = tmp_path / "small.png"
  image_io.write_png_atomic(path, image)
  return path


def test_crop_box_for_whole_image_and_face_box():
  np.testing.assert_allclose(descriptor_maps.crop_box_for((40, 60, 3), None), [0, -10, 60, 50])
  np.testing.assert_allclose(descriptor_maps.crop_box_for((512, 512, 3), ASTRONAUT_BOX, 1.8),
                             geometry.square_box(ASTRONAUT_BOX, 1.8), rtol=1e-6)
  with pytest.raises(ValueError, match="x1 > x0"):
    descriptor_maps.parse_bbox("10,10,5,20")
  with pytest.raises(ValueError, match="four numbers"):
    descriptor_maps.parse_bbox("1,2,3")
  np.testing.assert_array_equal(descriptor_maps.parse_bbox("1,2,3.5,4"), [1, 2, 3.5, 4])


@pytest.mark.parametrize("side", [128, 1024], ids=["8_samples", "reduced_first"])
def test_crop_of_a_large_region_is_the_ramp_at_each_centre(side, monkeypatch):
  """The descriptor crop over a region up to MAX_SUPERSAMPLE times its size samples it directly;
  a larger one (1,024 px into 16: 64 samples per pixel and axis) reduces the image first, so
  memory stays bounded. On a linear ramp both give the ramp's value at every pixel's centre."""
  from dff_jax import geometry
  rows, cols = np.mgrid[0:side, 0:side]
  ramp = lambda x, y: (x + y) * (200.0 / (2 * side))
  image = np.repeat(np.round(ramp(cols + 0.5, rows + 0.5)).astype(np.uint8)[..., None], 3, -1)
  box = np.array([0.0, 0.0, side, side])
  assert (side / 16 > descriptor_maps.MAX_SUPERSAMPLE) == (side == 1024)
  from dff_jax import sampling
  calls = []
  original = sampling.crop_image
  monkeypatch.setattr(sampling, "crop_image", lambda *a, **k: calls.append(k) or original(*a, **k))
  crop = descriptor_maps.crop(image, box, 16)
  assert [c["supersample"] for c in calls] == [8]  # never more samples than that
  centres = geometry.crop_pixel_centres_in_image(box, 16)
  expected = ramp(centres[..., 0], centres[..., 1])
  np.testing.assert_allclose(crop[..., 0], expected, atol=1.0)
  np.testing.assert_array_equal(crop[..., 0], crop[..., 2])


def test_crop_box_for_refuses_a_box_mostly_outside():
  with pytest.raises(ValueError, match=r"mostly outside the 60x40 image \(11 %"):
    descriptor_maps.crop_box_for((40, 60, 3), np.array([50.0, 30, 80, 60]))
  with pytest.raises(ValueError, match=r"outside the 60x40 image \(0 %"):
    descriptor_maps.crop_box_for((40, 60, 3), np.array([70.0, 0, 80, 10]))
  # Half inside (a face cut by the image border) is a box.
  np.testing.assert_allclose(descriptor_maps.crop_box_for((40, 60, 3), np.array([40.0, 0, 80, 20]),
                                                          1.0), [40, -10, 80, 30])


def test_extract_features_writes_map_and_box(tmp_path, tiny_model):
  out = tmp_path / "astro.npy"
  document = descriptor_maps.extract_features(ASTRONAUT, out, ASTRONAUT_BOX, model=tiny_model)
  descriptors = np.load(out)
  size, dim = tiny_model.image_size, tiny_model.descriptor_dim
  assert (size, dim) == (32, 8)
  assert descriptors.shape == (size, size, dim) and descriptors.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(descriptors, axis=-1), 1.0, atol=1e-4)
  written = json.loads(out.with_suffix(".json").read_text())
  assert written == json.loads(json.dumps(document))
  assert {"box", "bbox", "box_scale", "shape", "image", "checkpoint"} <= set(written)
  np.testing.assert_allclose(written["box"], geometry.square_box(ASTRONAUT_BOX, 1.8), rtol=1e-6)
  assert written["shape"] == [size, size, dim]
  # The map is the encoder applied to the crop of that box.
  image = image_io.read_image(ASTRONAUT)
  expected = descriptor_maps.describe_region(tiny_model, image, np.asarray(written["box"]))
  np.testing.assert_allclose(descriptors, expected, atol=1e-5)


def test_extract_features_whole_image_box(tmp_path, tiny_model, small_image):
  out = tmp_path / "small.npy"
  document = descriptor_maps.extract_features(small_image, out, model=tiny_model)
  assert document["box"] == [0.0, -10.0, 60.0, 50.0] and document["bbox"] is None
  assert np.load(out).shape == (32, 32, 8)


def test_show_features_one_and_two_images(tmp_path, tiny_model, small_image):
  one = show_features.show_features(ASTRONAUT, tmp_path / "one.png", bbox=ASTRONAUT_BOX,
                                    panel_size=64, model=tiny_model)
  picture = image_io.read_image(tmp_path / "one.png")
  pad = show_features.PANEL_PAD
  assert picture.shape == (64 + 2 * pad, 2 * 64 + 3 * pad, 3)
  assert list(picture.shape) == one["shape"]
  colours = picture[pad:pad + 64, 2 * pad + 64:2 * pad + 128]
  assert colours.std() > 5  # the descriptors are not one flat colour
  two = show_features.show_features(ASTRONAUT, tmp_path / "two.png", small_image,
                                    bbox=ASTRONAUT_BOX, panel_size=64, grid=3, model=tiny_model)
  picture = image_io.read_image(tmp_path / "two.png")
  assert picture.shape == (2 * 64 + 3 * pad, 2 * 64 + 3 * pad, 3)
  assert np.asarray(two["points_a_px"]).shape == (9, 2)
  matches = np.asarray(two["matches_b_px"])
  assert matches.shape == (9, 2)
  box_b = np.asarray(two["boxes"][1])  # whole small image: matches inside its square box
  assert np.all(matches >= box_b[:2]) and np.all(matches <= box_b[2:])
  # Grid points lie inside the face box of image A.
  points = np.asarray(two["points_a_px"])
  assert np.all(points >= ASTRONAUT_BOX[:2]) and np.all(points <= ASTRONAUT_BOX[2:])


def test_eval_matching_summary_and_outputs(tmp_path, tiny_model):
  methods = ["dff", "dense_sift", "patch"]
  try:
    matching_eval.import_cv2()
    methods.append("sift")
  except ValueError:
    pass
  face_models = ["default"] + (["sfm"] if SFM_NPZ.exists() else [])
  summary = matching_eval.eval_matching(tmp_path, num_pairs=2, face_models=face_models,
                                        methods=methods, model=tiny_model,
                                        num_correspondences=16)
  assert summary["seed"] == matching_eval.DEFAULT_SEED
  assert summary["image_size"] == 32 and summary["num_pairs"] == 2
  written = json.loads((tmp_path / "summary.json").read_text())
  assert written == summary
  for face_model in face_models:
    assert set(written["results"][face_model]) == set(methods)
    for method in methods:
      bins = written["results"][face_model][method]
      assert set(bins) == {"0-30", "30-60", "60-90", ">90", "all", ">=30"}
      entry = bins["all"]
      assert {"pck@1px", "pck@2px", "pck@4px", "pck@8px", "mean_error_px"} <= set(entry)
      assert entry["num_pairs"] == 2 and entry["num_points"] > 0
      assert 0.0 <= entry["pck@1px"] <= entry["pck@4px"] <= entry["pck@8px"] <= 1.0
    assert "dff_pck@4px_yawdiff>=30" in written["targets"][face_model]
    errors = np.load(tmp_path / f"errors_{face_model}.npz")
    assert errors["valid"].shape == (2, 16) and errors["yaw_difference_deg"].shape == (2,)
    assert errors["errors_dff"].shape == (2, 16)
    assert written["candidates"][face_model]["mean_face_pixels_b"] > 0
  if "sift" in methods:
    assert "dff_over_sift" in written["targets"]["default"]
  if "sfm" in face_models:
    assert "sfm_vs_default" in written["targets"]
  curves = image_io.read_image(tmp_path / "pck_curves.png")
  assert curves.shape[0] > 200 and curves.shape[1] > 400


def test_eval_matching_refuses_the_training_seed(tmp_path, tiny_model):
  with pytest.raises(ValueError, match="training data seed"):
    matching_eval.eval_matching(tmp_path, 1, methods=["dff"], model=tiny_model, seed=0)


def test_missing_opencv_gives_a_clear_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "cv2", None)
  with pytest.raises(ValueError, match="opencv-python-headless"):
    matching_eval.import_cv2()


def test_extract_features_command_runs(tmp_path, tiny_bundle):
  out = tmp_path / "features.npy"
  proc = _run("experiments.extract_features", f"--image={ASTRONAUT}", "--bbox=168,60,288,196",
              f"--checkpoint={tiny_bundle}", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert np.load(out).shape == (32, 32, 8)
  assert json.loads(out.with_suffix(".json").read_text())["box"] == json.loads(
      proc.stdout.strip().splitlines()[-1])["box"]


def test_commands_missing_image_give_one_line(tmp_path, tiny_bundle):
  missing = tmp_path / "nope.jpg"
  line = _one_error_line(_run("experiments.extract_features", f"--image={missing}",
                              f"--checkpoint={tiny_bundle}", f"--out={tmp_path / 'f.npy'}"),
                         "nope.jpg", "does not exist")
  assert line.startswith("extract_features: error:")
  _one_error_line(_run("experiments.show_features", f"--image={ASTRONAUT}",
                       f"--image_b={missing}", f"--checkpoint={tiny_bundle}",
                       f"--out={tmp_path / 'f.png'}"), "nope.jpg", "does not exist")
  assert not (tmp_path / "f.npy").exists() and not (tmp_path / "f.png").exists()


def test_commands_missing_checkpoint_give_one_line(tmp_path):
  missing = tmp_path / "no_checkpoint"
  _one_error_line(_run("experiments.extract_features", f"--image={ASTRONAUT}",
                       f"--checkpoint={missing}", f"--out={tmp_path / 'f.npy'}"),
                  "no_checkpoint", "does not exist")
  _one_error_line(_run("experiments.eval_matching", f"--checkpoint={missing}", "--methods=dff",
                       "--num_pairs=1",
                       f"--out_dir={tmp_path / 'eval'}"), "no_checkpoint", "does not exist")
  if not descriptor_maps.DEFAULT_CHECKPOINT.exists():
    _one_error_line(_run("experiments.show_features", f"--image={ASTRONAUT}",
                         f"--out={tmp_path / 'f.png'}"), "--checkpoint", "dff_default")
  _one_error_line(_run("experiments.eval_matching", "--methods=dff,bogus", "--num_pairs=1",
                       f"--out_dir={tmp_path / 'eval'}"), "bogus")
