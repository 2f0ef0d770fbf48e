"""Tests of experiments.align, experiments.eval_alignment and dff_jax.alignment.runner / draw.

The cascade used here is built in a session fixture without training: SIFT descriptors, 2 stages,
crop 64, **zero regressors** and the mean crop-frame pose of a few synthetic faces as the start,
so the cascade returns the mean face placed by the face box. Training even a tiny cascade takes
minutes on 2 cores (one ridge solve with 68 * 128 + 1 unknowns per stage), far beyond this file's
budget; these tests check the commands' plumbing (frames, batching, outputs, failures), not
accuracy. The faces are rendered with data_pipeline.faces.FaceSource at 64 x 64.
"""

import dataclasses
import json
import os
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

from conftest import AFLW_DIR, ROOT, run_module, stderr_lines, write_random_bundle
from data_pipeline import readers

CROP = 64
NUM_FACES = 4
SUMMARY_KEYS = {"normaliser", "nme_mean", "nme_by_yaw_bin", "failure_rate_0.08",
                "failure_rate_0.10", "auc_0.08"}
DOCUMENT_KEYS = {"image", "size_wh", "faces", "features", "cascade", "face_model", "box_source"}
JSON_KEYS = {"landmarks_px", "landmarks_3d_px", "visibility", "pose", "shape_coefficients",
             "expression_coefficients", "box", "score", "crop_box", "agreement",
             "landmark_agreement"}
POSE_KEYS = {"yaw_deg", "pitch_deg", "roll_deg", "scale", "translation_px"}


# The project's command runner and stderr reader, under the names this file and its importers use.
_run, _stderr_lines = run_module, stderr_lines


@pytest.fixture(scope="session")
def setup(tmp_path_factory):
  """Synthetic faces written as PNGs, and an untrained (zero-regressor) SIFT cascade file."""
  from data_pipeline import faces as faces_lib
  from data_pipeline.config import pipeline_config_from_dict
  from dff_jax import image_io
  from dff_jax.alignment import cascade, io as cascade_io, training
  from dff_jax.face_model import load_face_model

  root = tmp_path_factory.mktemp("align")
  config = pipeline_config_from_dict(dict(image_size=CROP, num_views=2, num_correspondences=16),
                                     seed=123)
  source = faces_lib.FaceSource(config, num_examples=NUM_FACES)
  faces = faces_lib.stack([source[i] for i in range(NUM_FACES)])
  images = root / "images"
  images.mkdir()
  for i in range(NUM_FACES):
    image_io.write_png_atomic(images / f"face{i}.png", faces["image"][i])

  cascade_config = cascade.CascadeConfig(num_stages=2, crop_size=CROP)
  crop_boxes = training.crop_boxes_for(faces["box"], cascade_config)
  initial_pose = training.pose_to_crop(faces["pose"], crop_boxes, CROP).mean(0)
  params = cascade.zero_params(2, 128, initial_pose)
  path = cascade_io.save_cascade(root / "cascade_sift.npz", params, cascade_config,
                                 dict(features="sift", descriptor_dim=128, face_model="default"))
  model = load_face_model("default")
  return dict(root=root, images=images, faces=faces, cascade=path, model=model)


# ----------------------------------------------------------------------------------------------
# Library pieces
# ----------------------------------------------------------------------------------------------


def test_working_crop_aligned_box_copies_pixels():
  from dff_jax.alignment import cascade, runner
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
  config = cascade.CascadeConfig(crop_size=8, box_scale=1.0)
  # A square box of side 16 at integer corners (5, 3): the working image (16 px) is that region.
  work, crop_box, work_box = runner.working_crop(image, np.array([5, 3, 21, 19.0]), config, 16)
  np.testing.assert_array_equal(work, image[3:19, 5:21])
  np.testing.assert_allclose(crop_box, [5, 3, 21, 19])
  np.testing.assert_allclose(work_box, [0, 0, 16, 16], atol=1e-5)
  # Outside the image is black.
  work, _, _ = runner.working_crop(image, np.array([-8, -8, 8, 8.0]), config, 16)
  assert np.all(work[:8, :8] == 0) and np.array_equal(work[8:, 8:], image[:8, :8])


def test_working_crop_of_a_huge_box_reduces_the_image_first():
  """A crop box of side 14,000 px (a panorama's whole-image box; cutting it as it is makes a
  196-megapixel region, which Pillow refuses as a decompression bomb) is cut from the image
  reduced by an integer factor: on a linear ramp every working pixel whose filter lies inside
  the image is the ramp's value at its centre."""
  from dff_jax import geometry
  from dff_jax.alignment import cascade, runner
  rows, cols = np.mgrid[0:1024, 0:1024]
  ramp = lambda x, y: (x + y) / 9.0  # image point (x, y) -> grey level
  image = np.round(ramp(cols + 0.5, rows + 0.5)).astype(np.uint8)[..., None]
  config = cascade.CascadeConfig(crop_size=35, box_scale=1.0)
  box = np.array([512 - 7000, 512 - 7000, 512 + 7000, 512 + 7000], np.float64)
  assert 14_000 > runner.MAX_CROP_SIDE
  work, crop_box, _ = runner.working_crop(image, box, config, 70, channels=1)
  np.testing.assert_allclose(crop_box, box)
  centres = geometry.crop_pixel_centres_in_image(crop_box, 70)  # [70, 70, 2] (x, y)
  inner = slice(33, 37)  # working pixels of 200 px whose filter (400 px) lies in the image
  expected = ramp(centres[inner, inner, 0], centres[inner, inner, 1])
  np.testing.assert_allclose(work[inner, inner, 0], expected, atol=1.5)
  assert work[0, 0, 0] == 0 and work[-1, -1, 0] == 0  # outside the image: black


def test_working_crop_grey_channels():
  from dff_jax import image_io
  from dff_jax.alignment import cascade, runner
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
  config = cascade.CascadeConfig(crop_size=8, box_scale=1.0)
  box = np.array([5, 3, 21, 19.0])  # a 16 px square at integer corners: the region itself
  work, _, _ = runner.working_crop(image, box, config, 16, channels=1)
  assert work.shape == (16, 16, 1) and work.dtype == np.uint8
  np.testing.assert_array_equal(work, image_io.rgb_to_grey(image[3:19, 5:21]))
  grey = image_io.rgb_to_grey(image)
  np.testing.assert_array_equal(runner.working_crop(grey, box, config, 16, channels=1)[0], work)
  np.testing.assert_array_equal(runner.working_crop(grey, box, config, 16, channels=3)[0],
                                np.repeat(work, 3, -1))
  for bad in (image[..., :2], image.astype(np.float32)):
    with pytest.raises(ValueError, match="uint8 image"):
      runner.working_crop(bad, box, config, 16)


def test_check_box_rejects_bad_boxes():
  from dff_jax.alignment import runner
  np.testing.assert_allclose(runner.check_box([1, 2, 30, 40], 50, 60), [1, 2, 30, 40])
  for bad in ([1, 2, 3], [10, 10, 5, 20], [0, 0, np.nan, 5], [100, 100, 120, 130], "abc"):
    with pytest.raises(ValueError):
      runner.check_box(bad, 50, 60)


def test_output_stems_are_distinct():
  from dff_jax.alignment import streaming
  stems = streaming.output_stems([Path("a/x.jpg"), Path("b/x.png"), Path("y.jpg")])
  assert stems == ["x_jpg", "x_png", "y"]


def test_summarise_errors_known_values():
  from dff_jax import metrics
  from dff_jax.evaluation import alignment as alignment_eval
  errors = np.array([0.02, 0.09, 0.2, 0.05])
  yaw = np.array([10.0, -45.0, 90.0, -20.0])
  summary = alignment_eval.summarise_errors(errors, yaw, "bbox")
  assert summary["nme_by_yaw_bin"] == {"0-30": 0.035, "30-60": 0.09, "60-90": 0.2}
  assert summary["yaw_bin_counts"] == {"0-30": 2, "30-60": 1, "60-90": 1}
  np.testing.assert_allclose(summary["nme_yaw_bin_mean"], (0.035 + 0.09 + 0.2) / 3)
  assert summary["failure_rate_0.08"] == 0.5 and summary["failure_rate_0.10"] == 0.25
  np.testing.assert_allclose(summary["auc_0.08"], metrics.auc(errors, 0.08))
  np.testing.assert_allclose(summary["nme_mean"], errors.mean())
  no_pose = alignment_eval.summarise_errors(errors[:1], None, "inter_ocular")
  assert no_pose["nme_by_yaw_bin"] == {"0-30": None, "30-60": None, "60-90": None}
  assert no_pose["normaliser"].startswith("inter_ocular")
  assert json.loads(json.dumps(no_pose)) == no_pose  # strict JSON (no NaN)


def test_yaw_error_summary_known_values():
  """Planted: the aligner turns a 45-degree face 5 degrees too far and an 80-degree one 10
  degrees too little, and gets a frontal one's sign wrong."""
  from dff_jax.evaluation import alignment as alignment_eval
  true = np.array([10.0, -45.0, 80.0])
  predicted = np.array([-10.0, -50.0, 70.0])
  summary = alignment_eval.yaw_error_summary(predicted, true)
  assert summary["bias"] == {"mean": -5.0 / 3, "0-30": 0.0, "30-60": 5.0, "60-90": -10.0}
  assert summary["abs_error"] == {"mean": 35.0 / 3, "0-30": 20.0, "30-60": 5.0, "60-90": 10.0}
  assert alignment_eval.yaw_error_summary(predicted, None) is None


def test_systematic_error_summary_planted_bias():
  """Planted: every frontal face's chin sits 0.03 low and its mouth 0.01 low, plus noise of a
  known size that is +-d in x on alternate faces (mean zero): with the bias removed only the
  noise is left, and the offsets come back."""
  from dff_jax.evaluation import alignment as alignment_eval
  offsets = np.zeros((4, 68, 2))
  offsets[:, 8, 1] += 0.03
  offsets[:, 48:68, 1] += 0.01
  offsets[:, :, 0] += 0.02 * np.array([1, -1, 1, -1])[:, None]
  yaw = np.array([5.0, 10.0, 20.0, 25.0])
  summary = alignment_eval.systematic_error_summary(offsets, yaw)
  np.testing.assert_allclose(summary["nme_after_removing_point_bias"]["0-30"], 0.02)
  assert summary["nme_after_removing_point_bias"]["30-60"] is None
  np.testing.assert_allclose(summary["chin_vertical_offset"]["0-30"], 0.03)
  np.testing.assert_allclose(summary["vertical_offset"]["mouth"]["0-30"], 0.01)
  np.testing.assert_allclose(summary["vertical_offset"]["jaw"]["0-30"], 0.03 / 17)
  # Turned faces are grouped by the sign of the yaw: opposite x biases on the two sides (a
  # mirrored convention) are both removed.
  turned = np.zeros((4, 68, 2))
  turned[:2, :, 0], turned[2:, :, 0] = 0.05, -0.05
  summary = alignment_eval.systematic_error_summary(turned, np.array([70.0, 80.0, -70.0, -80.0]))
  np.testing.assert_allclose(summary["nme_after_removing_point_bias"]["60-90"], 0.0, atol=1e-12)
  assert alignment_eval.systematic_error_summary(offsets, None) is None


def test_ced_plot_and_overlay_draw_something(setup):
  from dff_jax.alignment import draw
  plot = draw.render_ced_plot([("dff", np.array([0.01, 0.03, np.nan])),
                               ("sift", np.array([0.05, 0.2]))], title="TEST")
  assert plot.shape == (400, 560, 3) and plot.dtype == np.uint8
  for colour in draw.CURVE_COLOURS[:2]:  # both curves and legend boxes are drawn
    assert np.sum(np.all(plot == colour, axis=-1)) > 100
  faces, model = setup["faces"], setup["model"]
  image = np.full((64, 64, 3), 128, np.uint8)
  visibility = np.ones(68, bool)
  visibility[:5] = False
  overlay = draw.render_overlay(
      image, faces["landmarks_px"][0], visibility,
      dict(pitch_rad=0.0, yaw_rad=0.3, roll_rad=0.0, scale=0.25, translation_px=[32, 32]),
      np.zeros(model.num_identity), np.zeros(model.num_expression), model)
  assert np.sum(np.all(overlay == draw.VISIBLE_COLOUR, axis=-1)) > 50
  assert np.sum(np.all(overlay == draw.HIDDEN_COLOUR, axis=-1)) > 5
  assert np.sum(np.all(overlay == draw.MESH_COLOUR, axis=-1)) > 50
  assert np.all(image == 128)  # the input is not modified


# ----------------------------------------------------------------------------------------------
# experiments.align
# ----------------------------------------------------------------------------------------------


def _check_face(face, model):
  assert set(face) == JSON_KEYS
  assert np.asarray(face["landmarks_px"]).shape == (68, 2)
  assert np.asarray(face["landmarks_3d_px"]).shape == (68, 2)
  assert len(face["visibility"]) == 68
  assert all(isinstance(v, bool) for v in face["visibility"])
  assert set(face["pose"]) == POSE_KEYS and len(face["pose"]["translation_px"]) == 2
  assert len(face["shape_coefficients"]) == model.num_identity
  assert len(face["expression_coefficients"]) == model.num_expression
  assert len(face["box"]) == 4 and len(face["crop_box"]) == 4


def _check_document(document, model, image_wh=(CROP, CROP)):
  """The per-image layout; returns its only face."""
  assert set(document) == DOCUMENT_KEYS
  assert document["size_wh"] == list(image_wh)
  assert len(document["faces"]) == 1, document["faces"]
  _check_face(document["faces"][0], model)
  return document["faces"][0]


def test_align_with_bbox_and_whole_image(setup, tmp_path, monkeypatch):
  from dff_jax.alignment import files
  from dff_jax.alignment import runner
  from dff_jax.alignment import streaming
  monkeypatch.setattr(streaming, "REFINE_MIN_CHANGE", 0.0)  # every refinement pass is run
  faces, model = setup["faces"], setup["model"]
  image_path = setup["images"] / "face0.png"
  box = faces["box"][0]
  out = tmp_path / "bbox"
  summary = files.align_files(str(image_path), out, bbox=",".join(f"{v:.4f}" for v in box),
                              cascade=str(setup["cascade"]), batch_size=2, progress=False,
                              refine=1)
  assert summary["written"] == ["face0"] and summary["failed"] == []
  assert sorted(p.name for p in out.iterdir()) == ["face0.json", "face0_overlay.png"]
  document = json.loads((out / "face0.json").read_text())
  face = _check_document(document, model)
  assert document["image"] == str(image_path) and document["box_source"] == "given"
  np.testing.assert_allclose(face["box"], box, atol=1e-3)
  assert face["score"] is None
  # The mean face placed by the box: roughly on the true face (bbox NME well below 0.5).
  from dff_jax import metrics
  error = metrics.nme(np.asarray(face["landmarks_px"]), faces["landmarks_px"][0], "bbox")
  assert error < 0.3
  # A given box is a detector's by default: the last pass is cut around the box of the first
  # pass's landmarks. Said to be a landmark box, it is aligned once, cut around the box itself.
  from dff_jax import geometry
  first = np.asarray(face["landmarks_px"], np.float32)
  out_once = tmp_path / "bbox_landmarks"
  files.align_files(str(image_path), out_once, bbox=",".join(f"{v:.4f}" for v in box),
                    cascade=str(setup["cascade"]), batch_size=2, progress=False,
                    box_convention="landmarks", overlay=False)
  once = json.loads((out_once / "face0.json").read_text())["faces"][0]
  np.testing.assert_allclose(once["crop_box"], geometry.square_box(box, 1.25), atol=1e-3)
  before = np.asarray(once["landmarks_px"], np.float32)
  np.testing.assert_allclose(face["crop_box"], geometry.square_box(
      np.concatenate([before.min(0), before.max(0)]), 1.25), atol=1e-3)
  assert np.abs(first - before).max() > 0.1  # the second pass moved the points
  with pytest.raises(ValueError, match="box_convention"):
    files.align_files(str(image_path), out_once, cascade=str(setup["cascade"]),
                      box_convention="opencv", progress=False)
  overlay = readers_image(out / "face0_overlay.png")
  assert overlay.shape == (CROP, CROP, 3) and np.any(overlay != faces["image"][0])

  # Frames: the same face in a larger canvas, shifted by (dx, dy) with the box shifted too,
  # gives the same landmarks shifted (host crop + working frame mapping are exact).
  dx, dy = 37, 11
  canvas = np.zeros((CROP + 60, CROP + 80, 3), np.uint8)
  canvas[dy:dy + CROP, dx:dx + CROP] = faces["image"][0]
  from dff_jax import image_io
  shifted_path = tmp_path / "shifted.png"
  image_io.write_png_atomic(shifted_path, canvas)
  shifted = box + np.array([dx, dy, dx, dy], np.float32)
  out2 = tmp_path / "shifted"
  files.align_files(str(shifted_path), out2, bbox=",".join(f"{v:.4f}" for v in shifted),
                    cascade=str(setup["cascade"]), batch_size=2, progress=False, refine=1)
  moved = _check_document(json.loads((out2 / "shifted.json").read_text()), model,
                          (CROP + 80, CROP + 60))
  np.testing.assert_allclose(np.asarray(moved["landmarks_px"]) - [dx, dy],
                             face["landmarks_px"], atol=0.05)
  np.testing.assert_allclose(moved["pose"]["scale"], face["pose"]["scale"], rtol=1e-4)

  # --bbox=whole: the whole image is the face crop.
  out3 = tmp_path / "whole"
  files.align_files(str(image_path), out3, bbox="whole", cascade=str(setup["cascade"]),
                    batch_size=2, progress=False)
  document = json.loads((out3 / "face0.json").read_text())
  whole = _check_document(document, model)
  assert document["box_source"] == "whole image"
  np.testing.assert_allclose(whole["box"], runner.whole_image_box(CROP, CROP, 1.25), atol=1e-4)
  np.testing.assert_allclose(whole["crop_box"], [0, 0, CROP, CROP], atol=1e-4)

  # No box: the detector's faces, with their scores (the detector finds this render).
  from dff_jax import detection
  out4 = tmp_path / "detected"
  summary = files.align_files(str(image_path), out4, cascade=str(setup["cascade"]),
                              batch_size=2, progress=False)
  assert summary["faces"] == summary["faces_detected"] == 1
  document = json.loads((out4 / "face0.json").read_text())
  found = _check_document(document, model)
  assert document["box_source"].startswith("detector: blazeface")
  boxes, scores = detection.detect_faces(readers_image(image_path))
  np.testing.assert_allclose(found["box"], boxes[0], atol=1e-3)
  np.testing.assert_allclose(found["score"], scores[0], atol=1e-4)


def readers_image(path):
  from dff_jax import image_io
  return image_io.read_image(path)


def test_align_folder_with_boxes_skips_bad_image(setup, tmp_path):
  """Subprocess: --boxes for a folder with a corrupt image and a box outside its image."""
  folder = tmp_path / "in"
  folder.mkdir()
  faces = setup["faces"]
  boxes = {}
  for i in range(3):
    (folder / f"face{i}.png").write_bytes((setup["images"] / f"face{i}.png").read_bytes())
    boxes[f"face{i}.png"] = faces["box"][i].tolist()
  boxes["face2.png"] = [500, 500, 600, 600]  # outside the 64 x 64 image
  (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
  boxes["broken.jpg"] = [0, 0, 10, 10]
  (folder / "notes.txt").write_text("ignored: not an image")
  (folder / "data.csv").write_text("1,2,3\n")
  (folder / "sub").mkdir()  # folders are not files: not counted
  boxes_path = tmp_path / "boxes.json"
  boxes_path.write_text(json.dumps(boxes))
  out = tmp_path / "out"
  proc = _run("experiments.align", f"--images={folder}", f"--boxes={boxes_path}",
              f"--cascade={setup['cascade']}", "--batch_size=2", f"--out_dir={out}")
  assert proc.returncode == 1, proc.stderr
  lines = _stderr_lines(proc)
  assert len([l for l in lines if "broken.jpg" in l]) == 1, proc.stderr
  assert len([l for l in lines if "face2.png" in l and "outside" in l]) == 1, proc.stderr
  # The files passed over are counted and named in one warning line.
  warnings = [l for l in lines if "warning" in l]
  assert len(warnings) == 1 and "skipped 2 files" in warnings[0], proc.stderr
  assert "notes.txt" in warnings[0] and "data.csv" in warnings[0]
  assert sorted(p.name for p in out.iterdir()) == ["face0.json", "face0_overlay.png",
                                                  "face1.json", "face1_overlay.png"]
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
      "out_dir": str(out), "written": 2, "failed": 2, "faces": 2}
  # The summary line counts them too (4 images, 2 other files).
  summary_line = proc.stdout.strip().splitlines()[-2]
  assert summary_line.startswith("align: 4 images, 2 written, 2 failed, 2 other files skipped; "
                                 "2 faces"), summary_line
  for i in range(2):
    document = json.loads((out / f"face{i}.json").read_text())
    face = _check_document(document, setup["model"])
    np.testing.assert_allclose(face["box"], faces["box"][i], atol=1e-3)


def test_align_keeps_its_compiled_programs_for_the_next_run(setup, tmp_path):
  """Subprocess: with no JAX_COMPILATION_CACHE_DIR of the caller's, align writes its compiled
  programs under $DFF_JAX_XLA_CACHE/jaxlib-<release>-<CPU key>/ (experiments.cli
  .use_compilation_cache), and its output is the usual one."""
  own = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
  env = {k: v for k, v in os.environ.items() if k not in own}
  cache = tmp_path / "cache"
  out = tmp_path / "out"
  proc = run_module("experiments.align", f"--images={setup['images'] / 'face0.png'}",
                    f"--bbox={','.join(map(str, setup['faces']['box'][0].tolist()))}",
                    f"--cascade={setup['cascade']}", "--overlays=false", f"--out_dir={out}",
                    env=dict(env, DFF_JAX_XLA_CACHE=str(cache)))
  assert proc.returncode == 0, proc.stderr
  assert (out / "face0.json").exists()
  folders = list(cache.iterdir())
  assert len(folders) == 1 and folders[0].name.startswith("jaxlib-"), folders
  assert len(list(folders[0].iterdir())) > 0


def test_compilation_cache_off_and_the_callers_own(tmp_path, monkeypatch):
  """DFF_JAX_XLA_CACHE=off, or a folder that cannot be made: None is returned and the
  environment is left alone; a JAX_COMPILATION_CACHE_DIR of the caller's own is returned as it
  is, DFF_JAX_XLA_CACHE ignored."""
  from experiments import cli  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  monkeypatch.setenv(cli.CACHE_ENV, "off")
  assert cli.use_compilation_cache() is None
  assert not (tmp_path / "xdg").exists() and "JAX_COMPILATION_CACHE_DIR" not in os.environ
  # A folder that cannot be made (its parent is a file): off, without a word.
  (tmp_path / "a_file").write_text("")
  monkeypatch.setenv(cli.CACHE_ENV, str(tmp_path / "a_file" / "cache"))
  assert cli.use_compilation_cache() is None and "JAX_COMPILATION_CACHE_DIR" not in os.environ
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "own"))
  monkeypatch.setenv(cli.CACHE_ENV, str(tmp_path / "ignored"))
  assert cli.use_compilation_cache() == tmp_path / "own"
  assert not (tmp_path / "ignored").exists()


def test_the_suites_compilation_cache_folder(tmp_path, monkeypatch):
  """The suite's own cache (conftest): kept under $XDG_CACHE_HOME/dff_jax/xla-tests/<the
  commands' CPU key> by default; DFF_JAX_TEST_XLA_CACHE=fresh a new folder of the run's own;
  a folder named there, or a caller's JAX_COMPILATION_CACHE_DIR, used as given. folder_bytes
  adds up the planted files' sizes."""
  import conftest  # pylint: disable=g-import-not-at-top
  from experiments import cli  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.delenv(conftest.TEST_XLA_CACHE_ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  kept = tmp_path / "xdg" / "dff_jax" / "xla-tests" / cli.machine_key()
  assert conftest._suite_xla_cache() == (str(kept), "kept") and kept.is_dir()
  monkeypatch.setenv(conftest.TEST_XLA_CACHE_ENV, "fresh")
  folder, kind = conftest._suite_xla_cache()
  assert kind == "fresh" and Path(folder).is_dir() and not Path(folder).is_relative_to(tmp_path)
  Path(folder).rmdir()
  monkeypatch.setenv(conftest.TEST_XLA_CACHE_ENV, str(tmp_path / "mine"))
  assert conftest._suite_xla_cache() == (str(tmp_path / "mine"), "given")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "theirs"))
  assert conftest._suite_xla_cache() == (str(tmp_path / "theirs"), "given")
  (tmp_path / "sized").mkdir()
  for name, size in (("a", 3), ("b", 1000)):
    (tmp_path / "sized" / name).write_bytes(b"x" * size)
  (tmp_path / "sized" / "sub").mkdir()
  assert conftest.folder_bytes(tmp_path / "sized") == 1003
  assert conftest.folder_bytes(tmp_path / "missing") == 0


def test_align_every_format_several_boxes_and_skipped_files(setup, tmp_path):
  """Every extension of streaming.IMAGE_EXTENSIONS is read (the Netpbm family included); a boxes
  file gives two faces to one image and none to another; the other files are named once."""
  from PIL import Image
  from dff_jax.alignment import files
  from dff_jax.alignment import streaming
  assert {".ppm", ".pgm", ".pnm", ".jpg", ".png", ".tif", ".webp"} <= set(streaming.IMAGE_EXTENSIONS)
  faces, model = setup["faces"], setup["model"]
  face = Image.fromarray(faces["image"][0])
  folder = tmp_path / "formats"
  folder.mkdir()
  box = faces["box"][0].tolist()
  boxes = {}
  for ext in streaming.IMAGE_EXTENSIONS:
    name = f"face_{ext[1:]}{ext}"
    picture = {".pgm": face.convert("L"), ".pbm": face.convert("1"),
               ".gif": face.convert("P")}.get(ext, face)
    picture.save(folder / name, format=Image.registered_extensions()[ext])
    boxes[name] = box
  boxes["face_png.png"] = [box, [2.0, 2.0, 30.0, 30.0]]  # two faces, in this order
  boxes["face_jpg.jpg"] = []  # no face
  for name in ("README", "notes.txt", "scan.pdf"):
    (folder / name).write_text("not an image\n")
  boxes_path = tmp_path / "boxes.json"
  boxes_path.write_text(json.dumps(boxes))
  messages = []
  out = tmp_path / "out"
  summary = files.align_files(str(folder), out, boxes=str(boxes_path),
                              cascade=str(setup["cascade"]), batch_size=4, progress=False,
                              overlay=False, report=messages.append)
  assert summary["failed"] == [] and len(summary["written"]) == len(streaming.IMAGE_EXTENSIONS)
  assert summary["faces"] == len(streaming.IMAGE_EXTENSIONS) and summary["images_without_faces"] == 1
  assert len(messages) == 1 and messages[0].startswith("align: warning: skipped 3 files"), messages
  for name in ("README", "notes.txt", "scan.pdf"):
    assert name in messages[0]
  assert sorted(summary["skipped_files"]) == sorted(str(folder / n)
                                                    for n in ("README", "notes.txt", "scan.pdf"))
  for name, given in boxes.items():
    document = json.loads((out / f"{Path(name).stem}.json").read_text())
    assert document["size_wh"] == [CROP, CROP], name
    given = np.asarray(given, np.float64).reshape(-1, 4)
    assert len(document["faces"]) == len(given), name
    for found, expected in zip(document["faces"], given):
      _check_face(found, model)
      np.testing.assert_allclose(found["box"], expected, atol=1e-4)
      assert np.isfinite(found["landmarks_px"]).all()


def test_align_processes_each_image_its_own_planted_shift(setup, tmp_path):
  """Subprocess: ``--processes=2`` deals 7 images to two worker processes. Six are face0 pasted
  at a known offset (dx, dy) into a larger canvas, each with its box moved by the same offset,
  so every image's landmarks minus its own offset must be the same points (the zero-regressor
  cascade places the mean face by the box): an image aligned with another's box, or written
  under another's name, would break that. One image is corrupt: one failure line, exit 1. The
  summary merges both processes' counts; outputs are named as one process names them."""
  from dff_jax import image_io
  faces = setup["faces"]
  folder = tmp_path / "in"
  folder.mkdir()
  offsets = [(0, 0), (37, 11), (5, 40), (60, 3), (21, 29), (44, 52)]
  boxes = {}
  for n, (dx, dy) in enumerate(offsets):
    canvas = np.zeros((CROP + 60, CROP + 80, 3), np.uint8)
    canvas[dy:dy + CROP, dx:dx + CROP] = faces["image"][0]
    image_io.write_png_atomic(folder / f"im{n}.png", canvas)
    boxes[f"im{n}.png"] = (faces["box"][0] + np.array([dx, dy, dx, dy])).tolist()
  (folder / "im3x.jpg").write_bytes(b"this is not a jpeg")
  boxes["im3x.jpg"] = [0, 0, 10, 10]
  boxes_path = tmp_path / "boxes.json"
  boxes_path.write_text(json.dumps(boxes))
  out = tmp_path / "out"
  proc = _run("experiments.align", f"--images={folder}", f"--boxes={boxes_path}",
              f"--cascade={setup['cascade']}", "--batch_size=2", "--overlays=false",
              "--processes=2", "--run_summary", f"--out_dir={out}")
  assert proc.returncode == 1, proc.stderr
  lines = _stderr_lines(proc)
  assert len([l for l in lines if "im3x.jpg" in l]) == 1, proc.stderr
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
      "out_dir": str(out), "written": 6, "failed": 1, "faces": 6}
  reference = None
  for n, (dx, dy) in enumerate(offsets):
    document = json.loads((out / f"im{n}.json").read_text())
    assert document["image"] == str(folder / f"im{n}.png")
    face = _check_document(document, setup["model"], (CROP + 80, CROP + 60))
    np.testing.assert_allclose(face["box"], boxes[f"im{n}.png"], atol=1e-3)
    placed = np.asarray(face["landmarks_px"]) - [dx, dy]
    reference = placed if reference is None else reference
    np.testing.assert_allclose(placed, reference, atol=0.05)
  summary = json.loads((out / "run_summary.json").read_text())
  assert summary["processes"] == 2 and summary["images"] == 7 and summary["faces"] == 6
  assert summary["failures"] == 1 and len(summary["failed"]) == 1
  assert summary["wall_s"] > 0 and summary["compile_s"] > 0
  assert sorted(p.name for p in out.iterdir()) == sorted(
      [f"im{n}.json" for n in range(6)] + ["run_summary.json"])


def _mismatched_dff_cascade(setup, tmp_path):
  """``(cascade path, bundle path)``: a DFF cascade expecting 128-d descriptors and a random
  bundle giving 4-d ones (loading them together fails)."""
  from dff_jax.alignment import io as cascade_io
  params, config, _ = cascade_io.load_cascade(setup["cascade"])
  bundle = tmp_path / "bundle"
  write_random_bundle(bundle, image_size=CROP)
  dff = cascade_io.save_cascade(tmp_path / "cascade_dff.npz", params, config,
                                dict(features="dff", descriptor_dim=128, face_model="default"))
  return dff, bundle


def test_align_processes_worker_failure_is_one_line(setup, tmp_path, monkeypatch):
  """A worker that cannot load the aligner (a DFF cascade whose encoder gives another descriptor
  size) reports the cause in one line and breaks the start barrier, so the others stop too (the
  worker function run in this process; the command's own test spawns real ones)."""
  import queue
  import threading
  from dff_jax.alignment import files
  monkeypatch.setenv("NPROC", os.environ.get("NPROC", "2"))  # the worker sets it: restored after
  dff, bundle = _mismatched_dff_cascade(setup, tmp_path)
  settings = dict(bbox="whole", boxes=None, cascade=str(dff), features=None,
                  checkpoint=str(bundle), face_model=None, batch_size=2, overlay=False,
                  workers=0, writers=0, prefetch_batches=1, refine=None, mirror=False,
                  box_convention="detector")
  events, ready = queue.Queue(), threading.Barrier(2)
  entries = [(0, str(setup["images"] / "face0.png"), "face0")]
  files._process_worker(1, None, entries, str(tmp_path / "out"), settings, events, ready)  # pylint: disable=protected-access
  kind, rank, message = events.get_nowait()
  assert (kind, rank) == ("error", 1) and "\n" not in message
  assert "expects 128-d descriptors" in message and str(bundle) in message
  assert ready.broken and events.empty()
  with pytest.raises(ValueError, match="--processes must be >= 1"):
    files.align_files(str(setup["images"]), tmp_path / "out", processes=0)


def test_align_processes_parent_reports_the_failing_worker(setup, tmp_path, monkeypatch):
  """The parent side of --processes with the workers run as threads (multiprocessing.dummy, no
  pinning): workers that cannot load the aligner stop the run with one ValueError naming a
  worker and the cause, and nothing is left running."""
  import multiprocessing.dummy
  import queue
  import threading
  from dff_jax import cpu_processes
  from dff_jax.alignment import files

  class Threads:  # the part of a multiprocessing context the parent uses
    Queue, Barrier = queue.Queue, threading.Barrier

    @staticmethod
    def Process(target, name, daemon, args):  # pylint: disable=invalid-name,unused-argument
      return multiprocessing.dummy.Process(target=target, name=name, args=args)

  monkeypatch.setattr(cpu_processes, "context", Threads)
  monkeypatch.setattr(cpu_processes, "pin", lambda cores: None)
  dff, bundle = _mismatched_dff_cascade(setup, tmp_path)
  with pytest.raises(ValueError, match=r"^--processes=2: worker process 0 failed: cascade .* "
                                       r"expects 128-d descriptors"):
    files.align_files(str(setup["images"]), tmp_path / "out", bbox="whole", cascade=str(dff),
                      checkpoint=str(bundle), batch_size=2, progress=False, processes=2)
  assert not [t for t in threading.enumerate() if t.name.startswith("dff-align-")]


def test_core_groups_split_the_affinity(monkeypatch):
  from dff_jax import cpu_processes
  monkeypatch.setattr(cpu_processes.os, "sched_getaffinity", lambda pid: {7, 2, 3, 5, 4},
                      raising=False)
  assert cpu_processes.core_groups(1) == [[2, 3, 4, 5, 7]]
  assert cpu_processes.core_groups(2) == [[2, 3, 4], [5, 7]]
  assert cpu_processes.core_groups(5) == [[2], [3], [4], [5], [7]]
  assert cpu_processes.core_groups(6) == [None] * 6


def test_align_missing_cascade_or_checkpoint_one_line_error(setup, tmp_path):
  image = setup["images"] / "face0.png"
  proc = _run("experiments.align", f"--images={image}", f"--cascade={tmp_path / 'nope.npz'}",
              f"--out_dir={tmp_path / 'a'}")
  assert proc.returncode != 0
  lines = _stderr_lines(proc)
  assert len(lines) == 1 and "nope.npz" in lines[0] and "does not exist" in lines[0], proc.stderr
  # A DFF cascade with a checkpoint that does not exist.
  from dff_jax.alignment import io as cascade_io
  params, config, _ = cascade_io.load_cascade(setup["cascade"])
  dff = cascade_io.save_cascade(tmp_path / "cascade_dff.npz", params, config,
                                dict(features="dff", descriptor_dim=128, face_model="default"))
  proc = _run("experiments.align", f"--images={image}", f"--cascade={dff}",
              f"--checkpoint={tmp_path / 'no_bundle'}", f"--out_dir={tmp_path / 'b'}")
  lines = _stderr_lines(proc)
  assert proc.returncode != 0 and len(lines) == 1 and "no_bundle" in lines[0], proc.stderr
  assert not (tmp_path / "b").exists()


def test_default_cascade_missing_is_a_clear_error(monkeypatch, tmp_path):
  from dff_jax.alignment import runner
  monkeypatch.setattr(runner, "ASSETS", tmp_path)
  with pytest.raises(FileNotFoundError, match="--cascade=FILE"):
    runner.resolve_aligner(None, "sift")


# ----------------------------------------------------------------------------------------------
# experiments.eval_alignment
# ----------------------------------------------------------------------------------------------


def _check_summary(summary, out, dataset):
  written = json.loads((out / "summary.json").read_text())
  assert written == summary
  assert SUMMARY_KEYS <= set(written) and written["dataset"] == dataset
  assert set(written["nme_by_yaw_bin"]) == {"0-30", "30-60", "60-90"}
  assert 0.0 <= written["failure_rate_0.08"] <= 1.0 and 0.0 <= written["auc_0.08"] <= 1.0
  assert written["failure_rate_0.10"] <= written["failure_rate_0.08"]
  assert np.isfinite(written["nme_mean"]) and written["nme_mean"] > 0
  records = [json.loads(l) for l in (out / "errors.jsonl").read_text().splitlines()]
  assert len(records) == written["num_faces"]
  assert {"image", "method", "nme", "yaw_deg"} <= set(records[0])
  np.testing.assert_allclose(np.mean([r["nme"] for r in records]), written["nme_mean"])
  plot = readers_image(out / "ced.png")
  assert plot.ndim == 3 and plot.std() > 5
  return written


def test_eval_synthetic(setup, tmp_path):
  from experiments import eval_alignment
  out = tmp_path / "synthetic"
  summary = eval_alignment.evaluate("synthetic", out, cascade=str(setup["cascade"]),
                                    num_faces=3, batch_size=2, progress=False)
  summary = _check_summary(summary, out, "synthetic")
  assert summary["normaliser"].startswith("bbox") and summary["num_faces"] == 3
  assert summary["seed"] == 40_000 and summary["pipeline"]["image_size"] == CROP
  assert sum(summary["yaw_bin_counts"].values()) <= 3
  # The renders are also scored in the 3D convention: landmarks_3d_px against each render's
  # exact 3D landmarks. By hand: the same aligner on the same renders and boxes.
  from dff_jax import metrics
  from dff_jax.alignment import runner
  from dff_jax.evaluation import alignment as evaluation
  block = summary["landmarks_3d"]
  assert block["num_faces"] == 3 and block["normaliser"].startswith("bbox")
  assert set(block["nme_by_yaw_bin"]) == {"0-30", "30-60", "60-90"}
  assert "jaw_offset_along_turn" in block["nme_by_region"]
  aligner = runner.load_aligner(runner.resolve_aligner(str(setup["cascade"]), None, None, None))
  eval_set = evaluation.synthetic_set(3, 40_000, CROP, "default")
  expected = []
  for job in eval_set.jobs:
    loaded = job.load()
    work, crop_box, _ = runner.working_crop(loaded.image, loaded.box, aligner.config,
                                            aligner.work_size, aligner.channels)
    face = runner.to_image_frame(aligner.align_working(work[None]), 0, crop_box, loaded.box,
                                 aligner.work_size)
    target = evaluation.exact_3d_target(aligner.alignment_model, loaded.truth)
    expected.append(metrics.nme(face.landmarks_3d_px, target, "bbox"))
  np.testing.assert_allclose(block["nme_mean"], np.mean(expected), rtol=1e-5)
  assert block["nme_mean"] != summary["nme_mean"]   # not the outline score again


def test_exact_3d_target_inner_points_are_the_renderers(setup):
  """A render's exact 3D-convention landmarks share the 51 inner vertices with its labels:
  there they equal the points the renderer projected (NumPy vertices and rotation of the pair
  pipeline, not the cascade's rows), at every yaw; on a turned face the jaw differs (the 3D jaw
  line, not the silhouette)."""
  from dff_jax.alignment import cascade
  from dff_jax.evaluation import alignment as evaluation
  model = setup["model"]
  np.testing.assert_array_equal(np.asarray(model.landmark_3d_vertex_ids)[17:],
                                np.asarray(model.landmark_vertex_ids)[17:])
  alignment_model = cascade.alignment_model_for(model, {})
  eval_set = evaluation.synthetic_set(6, 40_000, CROP, "default")
  turned = 0
  for job in eval_set.jobs:
    truth = job.load().truth
    target = evaluation.exact_3d_target(alignment_model, truth)
    np.testing.assert_allclose(target[17:], truth["landmarks_px"][17:], atol=2e-3)
    if abs(truth["yaw_deg"]) > 30:
      turned += 1
      assert np.max(np.abs(target[:17] - truth["landmarks_px"][:17])) > 0.2
  assert turned


def _write_faces_as_dataset(setup, folder, kind):
  """Writes the synthetic faces as 300W (.png + .pts) or AFLW2000-3D (.jpg + .mat) files."""
  import imageio.v3 as iio
  faces = setup["faces"]
  for i in range(3):
    stem = folder / (f"image{i:05d}" if kind == "aflw2000" else f"sub/face_{i}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    landmarks = faces["landmarks_px"][i]
    if kind == "300w":
      iio.imwrite(stem.with_suffix(".png"), faces["image"][i])
      readers.write_pts(stem.with_suffix(".pts"), landmarks)
    else:
      iio.imwrite(stem.with_suffix(".jpg"), faces["image"][i], quality=95)
      pt3d = np.concatenate([readers.pixel_centres_to_one_based(landmarks).T,
                             np.zeros((1, 68))])
      yaw = float(faces["pose"][i, 2])
      pose = np.array([[0.0, -yaw, 0.0, 0.0, 0.0, 0.0, 1.0]])  # 3DDFA sign: ours ~ -file
      scipy.io.savemat(str(stem.with_suffix(".mat")), {"pt3d_68": pt3d, "Pose_Para": pose})
  if kind == "300w":  # an image without annotation is ignored
    iio.imwrite(folder / "no_annotation.png", faces["image"][3])


def test_eval_300w_fixture(setup, tmp_path):
  from experiments import eval_alignment
  data = tmp_path / "300w"
  _write_faces_as_dataset(setup, data, "300w")
  out = tmp_path / "out"
  summary = eval_alignment.evaluate("300w", out, data_dir=str(data),
                                    cascade=str(setup["cascade"]), batch_size=2, progress=False)
  summary = _check_summary(summary, out, "300w")
  assert summary["num_faces"] == 3 and summary["normaliser"].startswith("inter_ocular")
  assert "estimated" in summary["yaw_source"]
  # The estimated yaws are the rendered ones (3DMM fit to exact landmarks), within a few degrees.
  records = [json.loads(l) for l in (out / "errors.jsonl").read_text().splitlines()]
  true_yaw = np.degrees(setup["faces"]["pose"][:3, 2])
  np.testing.assert_allclose([r["yaw_deg"] for r in records], true_yaw, atol=6.0)


def test_eval_aflw2000_fixture(setup, tmp_path):
  from experiments import eval_alignment
  data = tmp_path / "aflw"
  data.mkdir()
  _write_faces_as_dataset(setup, data, "aflw2000")
  (data / "image00009.jpg").write_bytes(b"broken")  # unreadable image with an annotation
  (data / "image00009.mat").write_bytes((data / "image00000.mat").read_bytes())
  out = tmp_path / "out"
  messages = []
  summary = eval_alignment.evaluate("aflw2000", out, data_dir=str(data),
                                    cascade=str(setup["cascade"]), batch_size=2, progress=False,
                                    report=messages.append)
  summary = _check_summary(summary, out, "aflw2000")
  assert summary["num_faces"] == 3 and summary["normaliser"].startswith("bbox")
  assert len(messages) == 1 and "image00009.jpg" in messages[0]
  assert len(summary["skipped"]) == 1
  records = [json.loads(l) for l in (out / "errors.jsonl").read_text().splitlines()]
  true_yaw = np.degrees(setup["faces"]["pose"][:3, 2])
  np.testing.assert_allclose([r["yaw_deg"] for r in records], true_yaw, atol=0.5)


def test_eval_aflw2000_real_images(setup, tmp_path):
  if not AFLW_DIR.is_dir():
    pytest.skip(f"{AFLW_DIR} is absent (../shared is optional)")
  out = tmp_path / "out"
  proc = _run("experiments.eval_alignment", "--dataset=aflw2000", f"--data_dir={AFLW_DIR}",
              "--num_faces=3", f"--cascade={setup['cascade']}", "--batch_size=3",
              f"--out_dir={out}")
  assert proc.returncode == 0, proc.stderr
  summary = json.loads((out / "summary.json").read_text())
  assert SUMMARY_KEYS <= set(summary) and summary["num_faces"] == 3
  assert 0 < summary["nme_mean"] < 1.0


def test_eval_missing_data_dir_one_line(setup, tmp_path):
  proc = _run("experiments.eval_alignment", "--dataset=300w", f"--data_dir={tmp_path / 'none'}",
              f"--cascade={setup['cascade']}", f"--out_dir={tmp_path / 'out'}")
  lines = _stderr_lines(proc)
  assert proc.returncode != 0 and len(lines) == 1 and "none" in lines[0], proc.stderr


def test_align_with_dff_bundle(setup, tmp_path):
  """The DFF path: a tiny random encoder written as an inference bundle, a zero cascade for it."""
  from dff_jax.alignment import cascade, io as cascade_io
  from dff_jax.alignment import files
  bundle = write_random_bundle(tmp_path / "bundle", CROP)
  sift_params, config, _ = cascade_io.load_cascade(setup["cascade"])
  dff_params = cascade.zero_params(2, 4, sift_params.initial_pose)
  dff = cascade_io.save_cascade(tmp_path / "cascade_dff.npz", dff_params, config,
                                dict(features="dff", descriptor_dim=4, face_model="default"))
  out = tmp_path / "out"
  image = setup["images"] / "face1.png"
  summary = files.align_files(str(image), out, bbox=",".join(map(str, setup["faces"]["box"][1])),
                              cascade=str(dff), checkpoint=str(bundle), batch_size=2,
                              progress=False)
  assert summary["written"] == ["face1"]
  document = json.loads((out / "face1.json").read_text())
  _check_document(document, setup["model"])
  assert document["features"] == "dff"
  # Regressors that read the pixels: a PNG decoded grey (no overlay: nothing needs colour) and
  # in colour (an overlay is drawn; the working crop is converted to luma on the host) gives
  # the same working images, so the same faces; and the pixels did move the landmarks.
  rng = np.random.default_rng(0)
  moving = dataclasses.replace(
      dff_params, landmark_weights=jnp.asarray(
          rng.normal(0, 0.5, dff_params.landmark_weights.shape), jnp.float32))
  moving_path = cascade_io.save_cascade(tmp_path / "cascade_moving.npz", moving, config,
                                        dict(features="dff", descriptor_dim=4,
                                             face_model="default"))
  landmarks = {}
  for overlay in (True, False):
    out_decode = tmp_path / f"decode_{overlay}"
    files.align_files(str(image), out_decode, bbox=",".join(map(str, setup["faces"]["box"][1])),
                      cascade=str(moving_path), checkpoint=str(bundle), batch_size=2,
                      progress=False, overlay=overlay)
    assert (out_decode / "face1_overlay.png").exists() == overlay
    landmarks[overlay] = np.asarray(json.loads((out_decode / "face1.json").read_text())
                                    ["faces"][0]["landmarks_px"])
  np.testing.assert_allclose(landmarks[False], landmarks[True], atol=1e-4)
  still = json.loads((out / "face1.json").read_text())["faces"][0]["landmarks_px"]
  assert np.abs(landmarks[False] - np.asarray(still)).max() > 0.5
  # The SIFT-sized cascade with this 4-d encoder: a clear error before anything is written.
  sift_as_dff = cascade_io.save_cascade(tmp_path / "big_dff.npz", sift_params, config,
                                        dict(features="dff", descriptor_dim=128))
  with pytest.raises(ValueError, match="128-d descriptors"):
    files.align_files(str(image), tmp_path / "out2", cascade=str(sift_as_dff),
                      checkpoint=str(bundle), progress=False)


# ----------------------------------------------------------------------------------------------
# experiments.calibrate_outputs
# ----------------------------------------------------------------------------------------------


def _write_faces68(setup, folder, sources):
  """The synthetic faces as a faces68-layout train split (JPEG crops, their labels, sources)."""
  import imageio.v3 as iio
  (folder / "images").mkdir(parents=True)
  entries = {}
  for i, source in enumerate(sources):
    name = f"{source.split('-')[0]}_face{i}"
    iio.imwrite(folder / "images" / f"{name}.jpg", setup["faces"]["image"][i], quality=95)
    entries[name] = {"landmarks_px": setup["faces"]["landmarks_px"][i].tolist(),
                     "source": source, "size_wh": [CROP, CROP]}
  (folder / "train.json").write_text(json.dumps(entries))


def test_calibrate_outputs_command_and_a_second_calibration_adds_nothing(setup, tmp_path):
  """The command aligns only the chosen sources' faces and writes a cascade whose outputs carry
  the offsets: the report's NME after calibration is what the new file's aligner then scores on
  the same faces, and calibrating that file again finds (almost) nothing left to move. The jaw
  gets no offset; an unknown source is one line naming the sources present."""
  from dff_jax.alignment import calibration
  from dff_jax.alignment import io as cascade_io
  data = tmp_path / "faces68"
  _write_faces68(setup, data, ["afw", "afw", "helen-train", "ytf-train"])
  # Random pose regressors, so that the faces end in different rotations (offsets along the
  # depth of a single view are unobservable).
  params, config, meta = cascade_io.load_cascade(setup["cascade"])
  rng = np.random.default_rng(0)
  params = params.replace(pose_weights=rng.normal(0, 0.05, params.pose_weights.shape))
  start = cascade_io.save_cascade(tmp_path / "start" / "cascade_sift.npz", params, config, meta,
                                  compact=False)
  first_path = tmp_path / "first" / "cascade_sift.npz"
  proc = _run("experiments.calibrate_outputs", f"--cascade={start}",
              f"--data_dir={data}", "--sources=afw,helen-train", f"--out={first_path}",
              "--batch_size=2")
  assert proc.returncode == 0, proc.stderr
  first = json.loads(proc.stdout)
  assert first["faces"] == 3 and first["skipped"] == 0 and first["sources"] == ["afw", "helen-train"]
  assert first["nme_after"] < first["nme_before"] and first["mean_offset_mm"] > 0.1
  _, _, meta = cascade_io.load_cascade(first_path)
  offsets = np.asarray(meta["output_offsets_mm"])
  assert offsets.shape == (68, 3) and not offsets[:17].any() and np.abs(offsets[17:]).max() > 0.1
  second = calibration.calibrate_cascade(str(first_path), tmp_path / "second.npz", str(data),
                                         sources=["afw", "helen-train"], batch_size=2)
  np.testing.assert_allclose(second["nme_before"], first["nme_after"], rtol=1e-4)
  assert second["mean_offset_mm"] < 0.01 * first["mean_offset_mm"]
  proc = _run("experiments.calibrate_outputs", f"--cascade={setup['cascade']}",
              f"--data_dir={data}", "--sources=lfpw", f"--out={tmp_path / 'x.npz'}")
  lines = _stderr_lines(proc)
  assert proc.returncode == 1 and len(lines) == 1 and "afw" in lines[0] and "lfpw" in lines[0]
  proc = _run("experiments.calibrate_outputs", f"--data_dir={data}", "--split=val",
              f"--out={tmp_path / 'x.npz'}")
  lines = _stderr_lines(proc)
  assert proc.returncode == 2 and len(lines) == 1 and "validation only" in lines[0]


def test_eval_faces68_fixture_by_source(setup, tmp_path):
  """``--dataset=faces68 --split=train --sources=afw``: only that source's faces are scored (in
  the outline convention, inter-ocular), and the summary names the split and the sources."""
  from experiments import eval_alignment
  data = tmp_path / "faces68"
  _write_faces68(setup, data, ["afw", "ytf-train", "afw"])
  out = tmp_path / "out"
  summary = eval_alignment.evaluate("faces68", out, data_dir=str(data), split="train",
                                    sources=["afw"], cascade=str(setup["cascade"]), batch_size=2,
                                    progress=False)
  summary = _check_summary(summary, out, "faces68")
  assert summary["num_faces"] == 2 and summary["sources"] == ["afw"]
  assert summary["split"] == "train" and summary["landmark_convention"] == "outline"
  records = [json.loads(l) for l in (out / "errors.jsonl").read_text().splitlines()]
  assert all("afw_" in r["image"] for r in records)


class _PlantedBaseline:
  """Stands in for :class:`dff_jax.evaluation.dlib_baseline.DlibBaseline`: its detector finds a
  far-away box and the face's landmark box moved by ``shift`` pixels (none for the faces in
  ``missed``); its predictor answers the annotation moved right by ``error`` inter-ocular
  distances (so its NME is exactly ``error``)."""

  def __init__(self, faces, shift, error, missed=()):
    self.faces, self.shift, self.error, self.missed = faces, shift, error, set(missed)
    self.detected = {}

  def _index(self, image):
    return int(np.argmin([np.abs(image[..., 0].astype(float) - f[..., 0]).mean()
                          for f in self.faces["grey"]]))

  def detect(self, image):
    i = self._index(image)
    far = np.array([0.0, 0.0, 4.0, 4.0], np.float32)
    if i in self.missed:
      return far[None]
    points = self.faces["landmarks_px"][i]
    box = np.concatenate([points.min(0), points.max(0)]).astype(np.float32) + self.shift
    self.detected[i] = box
    return np.stack([far, box])

  def predict(self, image, box):
    i = self._index(image)
    np.testing.assert_allclose(box, self.detected[i])  # from the detector's box
    points = np.array(self.faces["landmarks_px"][i], np.float32)
    return points + [self.error * np.linalg.norm(points[36] - points[45]), 0.0]

  def describe(self):
    return {"dlib_version": "planted", "predictor": "none"}


def test_eval_detector_boxes_refinement_and_dlib_baseline(setup, tmp_path, monkeypatch):
  """``--boxes=dlib --compare_dlib`` with a planted detector and predictor: our aligner gets the
  detection overlapping each annotation (not the far one), a face without one is left out of
  every method and counted, the baseline's NME is the planted error, and ``--refine`` passes
  are run and named in the protocol."""
  from dff_jax import image_io
  from dff_jax.evaluation import dlib_baseline
  from experiments import eval_alignment
  data = tmp_path / "faces68"
  _write_faces68(setup, data, ["afw", "afw", "helen-train"])
  faces = dict(setup["faces"], grey=[  # in face order (the names _write_faces68 gives)
      image_io.read_image(data / "images" / f"{n}.jpg", grey=True)
      for n in ("afw_face0", "afw_face1", "helen_face2")])

  def run(shift, refine, missed=()):
    planted = _PlantedBaseline(faces, shift, error=0.05, missed=missed)
    monkeypatch.setattr(dlib_baseline, "load", lambda path=None: planted)
    out = tmp_path / f"out_{shift}_{refine}_{len(missed)}"
    summary = eval_alignment.evaluate("faces68", out, data_dir=str(data), split="train",
                                      cascade=str(setup["cascade"]), batch_size=2,
                                      progress=False, boxes="dlib", compare_dlib=True,
                                      refine=refine)
    errors = {}
    for line in (out / "errors.jsonl").read_text().splitlines():
      record = json.loads(line)
      errors[(record["method"], Path(record["image"]).stem)] = record["nme"]
    return summary, errors

  landmark_summary = eval_alignment.evaluate("faces68", tmp_path / "lm", data_dir=str(data),
                                             split="train", cascade=str(setup["cascade"]),
                                             batch_size=2, progress=False)
  # A detector that finds exactly the landmark boxes: our figures are the landmark protocol's.
  summary, errors = run(0.0, 0, missed=[1])
  assert summary["num_faces"] == 2 and summary["num_faces_without_box"] == 1
  assert summary["skipped"] == [] and "dlib's HOG" in summary["box_protocol"]
  assert summary["methods"]["dlib"]["nme_mean"] == pytest.approx(0.05, rel=1e-4)
  assert summary["methods"]["dlib"]["landmark_convention_of_method"] == "outline"
  assert {name for _, name in errors} == {"afw_face0", "helen_face2"}
  lm_errors = {Path(json.loads(l)["image"]).stem: json.loads(l)["nme"]
               for l in (tmp_path / "lm" / "errors.jsonl").read_text().splitlines()}
  for name in ("afw_face0", "helen_face2"):
    assert errors[("sift", name)] == pytest.approx(lm_errors[name], rel=1e-5)
  assert landmark_summary["refine"] == 0 and landmark_summary["num_faces_without_box"] is None
  # Boxes moved by 6 px: our error changes (the box is the detector's), dlib's stays planted;
  # a refinement pass from our own landmarks' box is run (however little it moves the crop)
  # and named.
  from dff_jax.alignment import streaming
  monkeypatch.setattr(streaming, "REFINE_MIN_CHANGE", 0.0)
  shifted, shifted_errors = run(6.0, 0)
  assert shifted["num_faces"] == 3
  assert shifted_errors[("sift", "afw_face0")] != pytest.approx(lm_errors["afw_face0"], rel=1e-3)
  refined, refined_errors = run(6.0, 1)
  assert refined["refine"] == 1 and "up to 1 refinement pass" in refined["box_protocol"]
  assert refined["refine_min_change"] == 0.0
  assert refined["methods"]["sift"]["passes_per_face"] == 2.0
  assert shifted["methods"]["sift"]["passes_per_face"] == 1.0
  assert refined_errors[("sift", "afw_face0")] != pytest.approx(
      shifted_errors[("sift", "afw_face0")], rel=1e-3)
  assert refined["methods"]["dlib"]["nme_mean"] == pytest.approx(0.05, rel=1e-4)
  # Another detector's boxes from a file (align --boxes' layout, keyed by stem or file name):
  # the overlapping one is used; a face without an entry is left out and counted.
  far = [0.0, 0.0, 4.0, 4.0]
  lm_boxes = {name: np.concatenate([p.min(0), p.max(0)]).tolist()
              for name, p in zip(("afw_face0", "afw_face1", "helen_face2"),
                                 setup["faces"]["landmarks_px"][:3])}
  boxes_file = tmp_path / "other_detector.json"
  boxes_file.write_text(json.dumps({"afw_face0": [far, lm_boxes["afw_face0"]],
                                    "helen_face2.jpg": lm_boxes["helen_face2"]}))
  out = tmp_path / "from_file"
  from_file = eval_alignment.evaluate("faces68", out, data_dir=str(data), split="train",
                                      cascade=str(setup["cascade"]), batch_size=2,
                                      progress=False, boxes=str(boxes_file), refine=0)
  assert from_file["num_faces"] == 2 and from_file["num_faces_without_box"] == 1
  assert str(boxes_file) in from_file["box_protocol"]
  for line in (out / "errors.jsonl").read_text().splitlines():
    record = json.loads(line)
    name = Path(record["image"]).stem
    assert record["nme"] == pytest.approx(lm_errors[name], rel=1e-5)
  with pytest.raises(ValueError, match="--boxes must be one of"):
    eval_alignment.evaluate("faces68", tmp_path / "x", data_dir=str(data), split="train",
                            cascade=str(setup["cascade"]), boxes="opencv")


def test_dlib_frames_and_missing_dlib(monkeypatch):
  """dlib's inclusive pixel rectangles and integer parts to our continuous frame: a rectangle
  covering pixels 10..19 spans [10, 20); a box maps back to the same rectangle. Without dlib,
  loading says what to install, in one line."""
  from dff_jax.evaluation import dlib_baseline
  np.testing.assert_allclose(dlib_baseline.rectangle_to_box(10, 5, 19, 24), [10, 5, 20, 25])
  assert dlib_baseline.box_to_rectangle([10.0, 5.0, 20.0, 25.0]) == (10, 5, 19, 24)
  monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
  with pytest.raises(FileNotFoundError, match="requirements-compare.txt"):
    dlib_baseline.load()


def test_dlib_on_a_real_photo():
  """With dlib installed (optional) and ../shared present: dlib's detector finds the face of a
  faces68 validation photo around its annotation and its predictor lands near the annotation."""
  from conftest import SHARED
  from dff_jax import image_io
  from dff_jax.evaluation import dlib_baseline
  pytest.importorskip("dlib")
  data = SHARED / "datasets" / "faces68"
  if not data.is_dir():
    pytest.skip(f"{data} is absent (../shared is optional)")
  try:
    baseline = dlib_baseline.load()
  except FileNotFoundError as error:
    pytest.skip(str(error))
  name, entry = sorted(json.loads((data / "val.json").read_text()).items())[0]
  image = image_io.read_image(data / "images" / f"{name}.jpg")
  truth = np.asarray(entry["landmarks_px"], np.float32)
  boxes = baseline.detect(image)
  assert len(boxes)
  from dff_jax import detection
  overlap = detection.box_iou(np.concatenate([truth.min(0), truth.max(0)]).astype(np.float64),
                              boxes.astype(np.float64))
  assert overlap.max() > 0.5
  points = baseline.predict(image, boxes[int(np.argmax(overlap))])
  from dff_jax import metrics
  assert metrics.nme(points, truth, "inter_ocular") < 0.08
