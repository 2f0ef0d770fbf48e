"""Planted-truth tests of the alignment commands: answers known by construction, computed here.

A cascade with **zero regressors** changes nothing: every stage regresses a zero update, refits
the shape (which stays the mean: the targets are the mean shape's own projection) and re-projects
it, so the commands must return the initial state, the model's 68 landmark vertices projected
with the cascade's ``initial_pose`` (crop frame), mapped back to the image. This file writes such
a cascade with a chosen pose (non-zero pitch, yaw and roll) and computes the expected image-frame
answer **independently of the library**, in plain NumPy, from the documented conventions only:

* ``R = Rz(roll) Ry(yaw) Rx(pitch)`` (the textbook matrices written out below), weak
  perspective ``(s * Xc + tx, -s * Yc + ty)`` in crop pixels;
* the jaw landmarks (0-16) on the side turned away from the camera (the subject's left, model
  +x, for positive yaw) move along their row of ``contour_candidates`` to the candidate outermost
  in the image; the others keep their frontal vertex;
* crop box = the square of side ``box_scale * max(w, h)`` around the face box centre (the whole
  image's enclosing square when there is no box); crop point ``(x, y)`` -> image
  ``(x0 + x * side / S, y0 + y * side / S)`` (pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``
  in both frames, so there is no half-pixel term).

The same construction pins ``eval_alignment``: the ground truth of a 300W / AFLW2000-3D folder
is the expected output with a few interior landmarks moved by known offsets (the landmark box,
hence the face box the protocol gives the aligner, is unchanged), so the NME is known.
``extract_features`` and ``eval_matching`` get planted inputs whose answers are known by
construction (an integer-aligned crop is a pixel copy; a shifted noise image matches at the shift).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from dff_jax import metrics

CROP = 48
BOX_SCALE = 1.25
NUM_STAGES = 2
PITCH, YAW, ROLL = 0.12, 0.6, -0.2  # radians (yaw 34.4 degrees: the subject's left turns away)
LANDMARK_TOL_PX = 0.05
ANGLE_TOL_DEG = 1e-3


# ----------------------------------------------------------------------------------------------
# The independent answer (NumPy, no library code)
# ----------------------------------------------------------------------------------------------


def rotation_matrix(pitch, yaw, roll):
  """Rz(roll) @ Ry(yaw) @ Rx(pitch), each the textbook right-handed rotation."""
  ca, sa = math.cos(pitch), math.sin(pitch)
  cb, sb = math.cos(yaw), math.sin(yaw)
  cc, sc = math.cos(roll), math.sin(roll)
  rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
  ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
  rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
  return rz @ ry @ rx


def unit_projection(points, rotation):
  """Weak perspective at scale 1, no translation: ``(Xc, -Yc)``."""
  camera = np.asarray(points, np.float64) @ rotation.T
  return np.stack([camera[:, 0], -camera[:, 1]], axis=1)


def landmark_points(model, pitch, yaw, roll, outline=True):
  """``[68, 3]`` mean-shape model points (mm) of the landmarks for this pose: with ``outline``
  the jaw of the side turned away follows the silhouette (300-W convention), else the 68 fixed
  vertices of the 3D convention (``landmark_3d_vertex_ids``: the jaw on the jaw line,
  AFLW2000-3D)."""
  assert yaw > 0, "the rule below is written for positive yaw"
  rotation = rotation_matrix(pitch, yaw, roll)
  mean = np.asarray(model.mean_vertices, np.float64)
  if not outline:
    return mean[np.asarray(model.landmark_3d_vertex_ids, np.int64)]
  ids = np.asarray(model.landmark_vertex_ids, np.int64).copy()
  # Image direction of the model +x axis (the subject's left): for positive yaw that side is
  # turned away, and its jaw points sit on the silhouette, outermost along this direction.
  outward = unit_projection(np.eye(3)[:1], rotation)[0]
  outward /= np.linalg.norm(outward)
  candidates = np.asarray(model.contour_candidates, np.int64)
  for row in range(9, 17):
    projected = unit_projection(mean[candidates[row]], rotation) @ outward
    ids[row] = candidates[row, int(np.argmax(projected))]
  return mean[ids]


def planted_pose(model):
  """A crop-frame pose whose landmark box is centred in the crop with its larger side
  ``CROP / BOX_SCALE``: the face box of the landmarks then gives back exactly this crop."""
  points = unit_projection(landmark_points(model, PITCH, YAW, ROLL),
                           rotation_matrix(PITCH, YAW, ROLL))
  low, high = points.min(0), points.max(0)
  scale = CROP / BOX_SCALE / float(np.max(high - low))
  translation = CROP / 2 - scale * (low + high) / 2
  return np.array([scale, PITCH, YAW, ROLL, *translation], np.float64)


def crop_landmarks(model, pose, outline=True):
  """``[68, 2]`` crop-frame landmarks of the mean shape under ``pose`` (see
  :func:`landmark_points`)."""
  s, pitch, yaw, roll, tx, ty = pose
  return s * unit_projection(landmark_points(model, pitch, yaw, roll, outline),
                             rotation_matrix(pitch, yaw, roll)) + [tx, ty]


def crop_box_of(box, image_hw):
  """The square crop box (image pixels) of a face box, or of the whole image for ``None``."""
  if box is None:
    height, width = image_hw
    side = max(height, width)
    return np.array([width / 2 - side / 2, height / 2 - side / 2,
                     width / 2 + side / 2, height / 2 + side / 2])
  x0, y0, x1, y1 = np.asarray(box, np.float64)
  side = BOX_SCALE * max(x1 - x0, y1 - y0)
  cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
  return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def expected_face(model, pose, box, image_hw):
  """The answer in image pixels: landmarks, angles, scale, translation, crop box."""
  crop_box = crop_box_of(box, image_hw)
  factor = (crop_box[2] - crop_box[0]) / CROP  # image pixels per crop pixel
  return dict(landmarks_px=crop_box[:2] + crop_landmarks(model, pose) * factor,
              landmarks_3d_px=crop_box[:2] + crop_landmarks(model, pose, False) * factor,
              yaw_deg=math.degrees(pose[2]), pitch_deg=math.degrees(pose[1]),
              roll_deg=math.degrees(pose[3]), scale=pose[0] * factor,
              translation_px=crop_box[:2] + pose[4:6] * factor, crop_box=crop_box)


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------

# name: (height, width, face box or None = whole image)
IMAGES = {
    "wide.png": (100, 130, (20.3, 15.7, 80.9, 88.2)),
    "tall.png": (140, 90, (-5.5, 30.25, 60.0, 100.0)),  # crop box beyond the left edge
    "whole.png": (70, 96, None),
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
  from dff_jax import image_io
  from dff_jax.alignment import cascade, io as cascade_io
  from dff_jax.face_model import load_face_model
  root = tmp_path_factory.mktemp("planted")
  model = load_face_model("default")
  pose = planted_pose(model)
  config = cascade.CascadeConfig(num_stages=NUM_STAGES, crop_size=CROP, box_scale=BOX_SCALE)
  params = cascade.zero_params(NUM_STAGES, 128, np.asarray(pose, np.float32))
  path = cascade_io.save_cascade(root / "cascade_sift.npz", params, config,
                                 dict(features="sift", descriptor_dim=128, face_model="default"),
                                 compact=False)
  images = root / "images"
  images.mkdir()
  rng = np.random.default_rng(5)
  for name, (height, width, _) in IMAGES.items():
    image_io.write_png_atomic(images / name, rng.integers(0, 256, (height, width, 3), np.uint8))
  boxes = root / "boxes.json"
  boxes.write_text(json.dumps({name: ("whole" if box is None else list(box))
                               for name, (_, _, box) in IMAGES.items()}))
  return dict(root=root, model=model, pose=pose, cascade=path, images=images, boxes=boxes)


def _run(*args):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _check_face(got, expected, model, where=""):
  """``got``: landmarks_px, yaw_deg, pitch_deg, roll_deg, scale, translation_px, crop_box,
  visibility, shape_coefficients, expression_coefficients."""
  np.testing.assert_allclose(got["landmarks_px"], expected["landmarks_px"],
                             atol=LANDMARK_TOL_PX, rtol=0, err_msg=f"{where}: landmarks")
  if got.get("landmarks_3d_px") is not None:  # the fixed 68 vertices (3D jaw line)
    np.testing.assert_allclose(got["landmarks_3d_px"], expected["landmarks_3d_px"],
                               atol=LANDMARK_TOL_PX, rtol=0, err_msg=f"{where}: 3D landmarks")
  for key in ("yaw_deg", "pitch_deg", "roll_deg"):
    np.testing.assert_allclose(got[key], expected[key], atol=ANGLE_TOL_DEG, err_msg=f"{where}: {key}")
  np.testing.assert_allclose(got["scale"], expected["scale"], rtol=1e-4, err_msg=f"{where}: scale")
  np.testing.assert_allclose(got["translation_px"], expected["translation_px"],
                             atol=LANDMARK_TOL_PX, err_msg=f"{where}: translation")
  np.testing.assert_allclose(got["crop_box"], expected["crop_box"], atol=1e-3,
                             err_msg=f"{where}: crop box")
  # The mean shape stays the mean shape.
  assert np.max(np.abs(got["shape_coefficients"])) < 1e-3, where
  assert np.max(np.abs(got["expression_coefficients"])) < 1e-3, where
  assert len(got["shape_coefficients"]) == model.num_identity
  # Jaw points 9-16 sit on the silhouette of the cheek turned away: visible by construction.
  assert all(got["visibility"][9:17]), where


def _from_json(document, image_hw):
  """The only face of an image's document (``{"image", "size_wh", "faces": [...]}``)."""
  height, width = image_hw
  assert document["size_wh"] == [width, height]
  assert len(document["faces"]) == 1, document["faces"]
  document = document["faces"][0]
  assert document["score"] is None  # a given box
  pose = document["pose"]
  return dict(landmarks_px=np.asarray(document["landmarks_px"]),
              landmarks_3d_px=document.get("landmarks_3d_px"), yaw_deg=pose["yaw_deg"],
              pitch_deg=pose["pitch_deg"], roll_deg=pose["roll_deg"], scale=pose["scale"],
              translation_px=pose["translation_px"], crop_box=document["crop_box"],
              visibility=document["visibility"],
              shape_coefficients=np.asarray(document["shape_coefficients"]),
              expression_coefficients=np.asarray(document["expression_coefficients"]))


# ----------------------------------------------------------------------------------------------
# The answer itself (the conventions this file relies on)
# ----------------------------------------------------------------------------------------------


def test_planted_answer_follows_the_documented_conventions(planted):
  """Positive yaw puts the nose tip (30) right of the outer eye corners' midpoint; the planted
  crop-frame landmarks fill the crop as planned."""
  model, pose = planted["model"], planted["pose"]
  points = crop_landmarks(model, pose)
  eyes_mid = (points[36] + points[45]) / 2
  assert points[30, 0] > eyes_mid[0] + 2.0
  low, high = points.min(0), points.max(0)
  np.testing.assert_allclose((low + high) / 2, [CROP / 2, CROP / 2], atol=1e-9)
  np.testing.assert_allclose(np.max(high - low), CROP / BOX_SCALE, atol=1e-9)
  # The far-side jaw really moved off its frontal vertices (the pose is not a trivial case).
  frontal = np.asarray(model.mean_vertices, np.float64)[np.asarray(model.landmark_vertex_ids)]
  moved = np.any(landmark_points(model, PITCH, YAW, ROLL)[9:17] != frontal[9:17], axis=1)
  assert moved.sum() >= 4


# ----------------------------------------------------------------------------------------------
# experiments.align, experiments.align --multiview, the Python API
# ----------------------------------------------------------------------------------------------


def test_align_command_returns_the_planted_state(planted, tmp_path):
  out = tmp_path / "out"
  proc = _run("experiments.align", f"--images={planted['images']}", f"--boxes={planted['boxes']}",
              f"--cascade={planted['cascade']}", "--batch_size=2", "--overlays=false",
              f"--out_dir={out}")
  assert proc.returncode == 0, proc.stderr
  for name, (height, width, box) in IMAGES.items():
    document = json.loads((out / f"{Path(name).stem}.json").read_text())
    expected = expected_face(planted["model"], planted["pose"], box, (height, width))
    _check_face(_from_json(document, (height, width)), expected, planted["model"],
                f"align {name}")


def test_align_multiview_command_returns_the_planted_state(planted, tmp_path):
  out = tmp_path / "out"
  proc = _run("experiments.align", f"--images={planted['images']}", f"--boxes={planted['boxes']}",
              f"--cascade={planted['cascade']}", "--multiview", "--overlays=false",
              f"--out_dir={out}")
  assert proc.returncode == 0, proc.stderr
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
      "out_dir": str(out), "written": len(IMAGES), "failed": 0, "faces": len(IMAGES)}
  planted_boxes = json.loads(Path(planted["boxes"]).read_text())
  for name, (height, width, box) in IMAGES.items():
    document = json.loads((out / f"{Path(name).stem}.json").read_text())
    assert document["multiview"] is True
    assert document["box_source"] == ("whole image" if planted_boxes[name] == "whole"
                                      else "given"), (name, document["box_source"])
    expected = expected_face(planted["model"], planted["pose"], box, (height, width))
    _check_face(_from_json(document, (height, width)), expected, planted["model"],
                f"align --multiview {name}")
  joint = json.loads((out / "multiview.json").read_text())
  assert joint["num_views"] == len(IMAGES)
  assert np.max(np.abs(joint["shape_coefficients"])) < 1e-3


def test_python_api_returns_the_planted_state(planted):
  from dff_jax import image_io
  from dff_jax.alignment import runner
  from dff_jax.alignment import streaming
  aligner = runner.load_aligner(runner.resolve_aligner(str(planted["cascade"])))

  def job(name, box):
    path = planted["images"] / name
    return streaming.Job(name=name, load=lambda: streaming.Loaded(
        image=image_io.read_image(path),
        box=runner.WHOLE_IMAGE if box is None else np.asarray(box)))

  jobs = [job(name, box) for name, (_, _, box) in IMAGES.items()]
  outcomes = list(streaming.run_jobs(aligner, jobs, batch_size=2, progress=False))
  assert [o.job.name for o in outcomes] == list(IMAGES) and all(o.error is None for o in outcomes)
  for outcome, (name, (height, width, box)) in zip(outcomes, IMAGES.items()):
    assert len(outcome.faces) == 1
    expected = expected_face(planted["model"], planted["pose"], box, (height, width))
    _check_face(_from_face(outcome.face), expected, planted["model"], f"run_jobs {name}")


def _from_face(face):
  """A :class:`dff_jax.Face`'s values as :func:`_check_face` reads them."""
  return dict(landmarks_px=face.landmarks_px, landmarks_3d_px=face.landmarks_3d_px,
              yaw_deg=math.degrees(face.pose.yaw_rad),
              pitch_deg=math.degrees(face.pose.pitch_rad),
              roll_deg=math.degrees(face.pose.roll_rad), scale=face.pose.scale,
              translation_px=face.pose.translation_px, crop_box=face.crop_box,
              visibility=face.visibility, shape_coefficients=face.shape_coefficients,
              expression_coefficients=face.expression_coefficients)


def test_public_aligner_returns_the_planted_state(planted):
  """dff_jax.Aligner: the images in memory, their boxes given (a second face in wide.png,
  ``"whole"`` for whole.png); every face is the planted state of its own box."""
  from dff_jax import Aligner, image_io
  aligner = Aligner.load(cascade=planted["cascade"])
  images, boxes, expected_boxes = [], [], []
  for name, (height, width, box) in IMAGES.items():
    images.append(image_io.read_image(planted["images"] / name))
    given = [box] if box is not None else [None]
    if name == "wide.png":
      given.append((60.0, 5.0, 120.0, 50.0))
    expected_boxes.append(given)
    boxes.append("whole" if box is None else [list(b) for b in given])
  result = aligner.align(images, boxes)
  assert [len(faces) for faces in result] == [len(b) for b in expected_boxes]
  for faces, given, (name, (height, width, _)) in zip(result, expected_boxes, IMAGES.items()):
    for face, box in zip(faces, given):
      assert face.score is None
      expected = expected_face(planted["model"], planted["pose"], box, (height, width))
      _check_face(_from_face(face), expected, planted["model"], f"Aligner.align {name} {box}")
      assert face.pose.yaw_deg == pytest.approx(math.degrees(face.pose.yaw_rad))


# ----------------------------------------------------------------------------------------------
# experiments.eval_alignment: a planted error with a known NME
# ----------------------------------------------------------------------------------------------


def _planted_ground_truth(model, pose, placement_scale, placement_offset):
  """``(prediction [68, 2], truth [68, 2], expected mean point error px)`` in an image where the
  crop frame is placed by a similarity (scale, offset): the truth is the aligner's (outline)
  answer with interior landmarks moved by known offsets that leave the landmark box, hence the
  face box of the protocol and the crop, unchanged."""
  prediction = crop_landmarks(model, pose) * placement_scale + placement_offset
  low, high = prediction.min(0), prediction.max(0)
  fixed = {int(np.argmin(prediction[:, 0])), int(np.argmax(prediction[:, 0])),
           int(np.argmin(prediction[:, 1])), int(np.argmax(prediction[:, 1])), 36, 45}
  rng = np.random.default_rng(11)
  truth = prediction.copy()
  moved = [k for k in range(68) if k not in fixed][::2]
  for k in moved:
    angle = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(0.5, 3.0)
    candidate = prediction[k] + length * np.array([np.cos(angle), np.sin(angle)])
    if np.all(candidate > low + 1e-3) and np.all(candidate < high - 1e-3):
      truth[k] = candidate
  errors = np.linalg.norm(truth - prediction, axis=1)
  assert (errors > 0).sum() >= 20
  np.testing.assert_allclose(np.concatenate([truth.min(0), truth.max(0)]),
                             np.concatenate([low, high]))
  return prediction, truth, errors.mean()


def test_eval_alignment_300w_reports_the_planted_nme(planted, tmp_path):
  """300W protocol: face box = landmark box of the .pts truth, NME by the outer eye corners."""
  from dff_jax import image_io
  from experiments import eval_alignment
  model, pose = planted["model"], planted["pose"]
  data = tmp_path / "300w"
  data.mkdir()
  expected = {}
  rng = np.random.default_rng(3)
  for n, (scale, offset, size) in enumerate([(1.7, (12.25, 20.5), (120, 110)),
                                             (2.6, (-3.0, 8.75), (150, 140))]):
    _, truth, mean_error = _planted_ground_truth(model, pose, scale, np.array(offset))
    stem = data / f"face_{n}"
    image_io.write_png_atomic(stem.with_suffix(".png"),
                              rng.integers(0, 256, size + (3,), np.uint8))
    # .pts is 1-based: the first pixel's centre is (1, 1), ours (0.5, 0.5).
    body = "\n".join(f"{x + 0.5:.6f} {y + 0.5:.6f}" for x, y in truth)
    stem.with_suffix(".pts").write_text(f"version: 1\nn_points: 68\n{{\n{body}\n}}\n")
    expected[str(stem.with_suffix(".png"))] = mean_error / np.linalg.norm(truth[36] - truth[45])
  out = tmp_path / "out"
  summary = eval_alignment.evaluate("300w", out, data_dir=str(data),
                                    cascade=str(planted["cascade"]), batch_size=2, progress=False)
  records = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
  assert sorted(r["image"] for r in records) == sorted(expected)
  for record in records:
    np.testing.assert_allclose(record["nme"], expected[record["image"]], atol=2e-4,
                               err_msg=record["image"])
  np.testing.assert_allclose(summary["nme_mean"], np.mean(list(expected.values())), atol=2e-4)
  assert summary["normaliser"].startswith("inter_ocular")


def test_eval_alignment_aflw2000_reports_the_planted_nme_in_its_yaw_bin(planted, tmp_path):
  """AFLW2000-3D protocol: face box = landmark box of pt3d_68, bbox normaliser, yaw from
  Pose_Para (3DDFA's sign: ours = -file for a pure yaw), scored on the fixed 68 landmark
  vertices (the 3D jaw line its annotation uses), so the far-side jaw adds a known error."""
  import imageio.v3 as iio
  import scipy.io
  from experiments import eval_alignment
  model, pose = planted["model"], planted["pose"]
  data = tmp_path / "aflw"
  data.mkdir()
  scale, offset = 2.2, np.array([30.5, 17.0])
  _, truth, _ = _planted_ground_truth(model, pose, scale, offset)
  prediction_3d = crop_landmarks(model, pose, outline=False) * scale + offset
  rng = np.random.default_rng(4)
  iio.imwrite(data / "image00001.jpg", rng.integers(0, 256, (150, 160, 3), np.uint8), quality=90)
  pt3d = np.concatenate([(truth + 0.5).T, np.zeros((1, 68))])
  scipy.io.savemat(str(data / "image00001.mat"),
                   {"pt3d_68": pt3d, "Pose_Para": np.array([[0.0, -np.radians(70.0), 0.0, 0, 0,
                                                             0, 1.0]])})
  out = tmp_path / "out"
  summary = eval_alignment.evaluate("aflw2000", out, data_dir=str(data),
                                    cascade=str(planted["cascade"]), batch_size=2, progress=False)
  size = truth.max(0) - truth.min(0)
  nme = np.linalg.norm(prediction_3d - truth, axis=1).mean() / math.sqrt(size[0] * size[1])
  np.testing.assert_allclose(summary["nme_mean"], nme, atol=2e-4)
  np.testing.assert_allclose(summary["nme_by_yaw_bin"]["60-90"], nme, atol=2e-4)
  assert summary["nme_by_yaw_bin"]["0-30"] is None and summary["nme_by_yaw_bin"]["30-60"] is None
  record = json.loads((out / "errors.jsonl").read_text().splitlines()[0])
  np.testing.assert_allclose(record["yaw_deg"], 70.0, atol=1e-6)
  # Where the error is: each region's points over the whole face's normaliser, and the jaw's
  # mean x offset signed by the yaw (+70 degrees here).
  regions = summary["nme_by_region"]
  point_errors = np.linalg.norm(prediction_3d - truth, axis=1) / math.sqrt(size[0] * size[1])
  for name, start, stop in metrics.REGIONS:
    np.testing.assert_allclose(regions[name]["60-90"], point_errors[start:stop].mean(),
                               atol=2e-4, err_msg=name)
  jaw_dx = (prediction_3d[:17, 0] - truth[:17, 0]).mean() / math.sqrt(size[0] * size[1])
  np.testing.assert_allclose(regions["jaw_offset_along_turn"]["60-90"], jaw_dx, atol=2e-4)


# ----------------------------------------------------------------------------------------------
# experiments.extract_features: the map of a crop known pixel for pixel
# ----------------------------------------------------------------------------------------------

LUMA = np.array([0.299, 0.587, 0.114])


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
  """A random tiny encoder (16 px, D = 4, grey) written as an inference bundle."""
  import jax
  import jax.numpy as jnp
  from flax import serialization
  from dff_jax import encoder as encoder_lib
  settings = dict(features=(4, 8), descriptor_dim=4, convs_per_level=1, num_groups=2)
  module = encoder_lib.encoder_from_config(settings)
  params = module.init(jax.random.PRNGKey(3), jnp.zeros((1, 16, 16, 1)))["params"]
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  bundle = tmp_path_factory.mktemp("tiny_encoder") / "bundle"
  bundle.mkdir()
  (bundle / "encoder_params.msgpack").write_bytes(serialization.msgpack_serialize(params))
  (bundle / "config.json").write_text(json.dumps(dict(
      encoder=dict(settings, channels=1), image_size=16, channels=1, step=0, experiment={})))

  def describe(crop_rgb):
    """The encoder on a hand-made crop ``[16, 16, 3]`` in [0, 255]: BT.601 grey, then
    ``(x / 255 - 0.5) / 0.25`` (the documented input normalisation)."""
    grey = (np.asarray(crop_rgb, np.float64) @ LUMA / 255.0 - 0.5) / 0.25
    return np.asarray(module.apply({"params": params},
                                   jnp.asarray(grey[None, ..., None], jnp.float32)))[0]

  return dict(bundle=bundle, describe=describe)


def _padded_region(image, x0, y0, side):
  """``image[y0:y0 + side, x0:x0 + side]`` (integers) with mid-grey 127.5 outside the image."""
  out = np.full((side, side, 3), 127.5)
  height, width = image.shape[:2]
  for i in range(side):
    for j in range(side):
      y, x = y0 + i, x0 + j
      if 0 <= y < height and 0 <= x < width:
        out[i, j] = image[y, x]
  return out


def test_extract_features_maps_the_documented_region(tiny_encoder, tmp_path):
  """Face boxes whose square crop region is integer-aligned: side 16 = S (the crop is a pixel
  copy, mid-grey outside the image), side 32 = 2 S (each crop pixel is the mean of a 2 x 2
  block); no box: the image's enclosing square."""
  from dff_jax import image_io
  from dff_jax import descriptor_maps
  rng = np.random.default_rng(8)
  image = rng.integers(0, 256, (40, 50, 3), np.uint8)
  path = tmp_path / "image.png"
  image_io.write_png_atomic(path, image)
  model = descriptor_maps.load_dff(str(tiny_encoder["bundle"]))  # the command's loader, once
  cases = [
      # (bbox, box_scale, crop box (x0, y0, side) by hand)
      ((10.0, 5.0, 18.0, 13.0), 2.0, (6, 1, 16)),      # side 16 = 2 x 8 around centre (14, 9)
      ((0.0, -2.0, 8.0, 6.0), 2.0, (-4, -6, 16)),      # beyond the top-left corner
      ((25.0, 12.0, 41.0, 26.0), 2.0, (17, 3, 32)),    # larger side 16 x 2 = 32 around (33, 19)
  ]
  for n, (bbox, box_scale, (x0, y0, side)) in enumerate(cases):
    out = tmp_path / f"map{n}.npy"
    document = descriptor_maps.extract_features(path, out, bbox=np.asarray(bbox, np.float32),
                                                 box_scale=box_scale, model=model)
    np.testing.assert_allclose(document["box"], [x0, y0, x0 + side, y0 + side], atol=1e-5)
    region = _padded_region(image, x0, y0, side)
    factor = side // 16
    crop = region.reshape(16, factor, 16, factor, 3).mean(axis=(1, 3))
    got = np.load(out)
    assert got.shape == (16, 16, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, tiny_encoder["describe"](crop), atol=2e-5,
                               err_msg=f"case {n}")
    assert json.loads(out.with_suffix(".json").read_text()) == document
  # No box: a 12 x 16 image is the square (0, -2, 16, 14), rows -2, -1, 12, 13 mid-grey.
  small = rng.integers(0, 256, (12, 16, 3), np.uint8)
  image_io.write_png_atomic(tmp_path / "small.png", small)
  document = descriptor_maps.extract_features(tmp_path / "small.png", tmp_path / "whole.npy",
                                               model=model)
  np.testing.assert_allclose(document["box"], [0, -2, 16, 14])
  np.testing.assert_allclose(np.load(tmp_path / "whole.npy"),
                             tiny_encoder["describe"](_padded_region(small, 0, -2, 16)), atol=2e-5)


# ----------------------------------------------------------------------------------------------
# experiments.eval_matching: a pair whose matches are known by construction
# ----------------------------------------------------------------------------------------------


def _shifted_pair(rng, size, shift, points_ij, offsets, yaw_difference_deg, invalid=()):
  """View B = a noise texture shifted by ``shift = (dx, dy)`` pixels from view A: the surface
  point at A pixel (i, j) is at B pixel (i - dy, j - dx). The ground truth given to the
  evaluation is that position plus ``offsets [K, 2]`` (planted annotation errors), so a
  perfect matcher's error on point k is ``|offsets[k]|``."""
  dx, dy = shift
  texture = rng.integers(0, 256, (size + 20, size + 20, 3), np.uint8)
  view_a = texture[10:10 + size, 10:10 + size]
  view_b = texture[10 + dy:10 + dy + size, 10 + dx:10 + dx + size]
  points_a = np.array([(j + 0.5, i + 0.5) for i, j in points_ij], np.float32)
  points_b = (points_a - np.array([dx, dy], np.float32) + offsets).astype(np.float32)
  valid = np.ones(len(points_a), bool)
  valid[list(invalid)] = False
  return dict(images=np.stack([view_a, view_b]), mask=np.ones((2, size, size), bool),
              points_a_px=points_a, points_b_px=points_b, valid=valid,
              yaw_rad=np.radians([0.0, yaw_difference_deg]).astype(np.float32))


def test_eval_matching_on_pairs_with_known_matches(monkeypatch, tmp_path):
  from data_pipeline import pairs
  from dff_jax.evaluation import matching as matching_eval
  rng = np.random.default_rng(21)
  size = 48
  points_ij = [(14, 15), (20, 30), (25, 18), (30, 27), (18, 22), (27, 33), (22, 16), (33, 20)]
  # Planted annotation errors (px): 0, 0, 0, 1.5, 3, 5 (3-4-5), 10, and 40 on an invalid point.
  offsets_0 = np.array([[0, 0], [0, 0], [0, 0], [1.5, 0], [0, -3], [3, 4], [-6, 8], [40, 0]])
  offsets_1 = np.array([[0, 0], [2.5, 0], [0, 0], [0, 7], [0, 0], [0, 0], [0, 0], [0, 0]])
  samples = [_shifted_pair(rng, size, (3, -2), points_ij, offsets_0, 45.0, invalid=(7,)),
             _shifted_pair(rng, size, (-4, 5), points_ij, offsets_1, 10.0)]

  class PlantedPairs:
    def __init__(self, config):
      self.config = config

    def __getitem__(self, i):
      return samples[i]

    def __len__(self):
      return len(samples)

  monkeypatch.setattr(pairs, "PairSource", PlantedPairs)
  summary = matching_eval.eval_matching(tmp_path, num_pairs=2, methods=["patch"],
                                        image_size=size, num_correspondences=len(points_ij))
  errors = np.load(tmp_path / "errors_default.npz")
  expected_0 = np.linalg.norm(offsets_0, axis=1)
  expected_1 = np.linalg.norm(offsets_1, axis=1)
  np.testing.assert_allclose(errors["errors_patch"][0][:7], expected_0[:7], atol=1e-4)
  np.testing.assert_allclose(errors["errors_patch"][1], expected_1, atol=1e-4)
  np.testing.assert_allclose(errors["yaw_difference_deg"], [45.0, 10.0], atol=1e-3)
  results = summary["results"]["default"]["patch"]
  # Pair 0 (yaw difference 45: bins 30-60 and >=30): 7 valid errors 0, 0, 0, 1.5, 3, 5, 10.
  assert results["30-60"]["num_points"] == 7 and results["30-60"]["num_pairs"] == 1
  for key, value in (("pck@1px", 3 / 7), ("pck@2px", 4 / 7), ("pck@4px", 5 / 7),
                     ("pck@8px", 6 / 7), ("mean_error_px", 19.5 / 7), ("median_error_px", 1.5)):
    np.testing.assert_allclose(results["30-60"][key], value, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(results[">=30"][key], value, atol=1e-5, err_msg=key)
  # Pair 1 (yaw difference 10: bin 0-30): errors 0 x 6, 2.5, 7.
  for key, value in (("pck@1px", 6 / 8), ("pck@2px", 6 / 8), ("pck@4px", 7 / 8),
                     ("pck@8px", 1.0), ("mean_error_px", 9.5 / 8)):
    np.testing.assert_allclose(results["0-30"][key], value, atol=1e-5, err_msg=key)
  assert results["all"]["num_points"] == 15
  np.testing.assert_allclose(results["all"]["pck@1px"], 9 / 15, atol=1e-5)
  assert results["60-90"]["num_points"] == 0 and results["60-90"]["pck@1px"] is None
