"""Face detection (dff_jax/detection.py) and its evaluation (dff_jax/evaluation/detection.py)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import AFLW_DIR, ROOT, require
from dff_jax import detection
from dff_jax import image_io
from dff_jax import tflite_graph
from dff_jax.evaluation import detection as evaluation

PORTRAIT = ROOT / "experiments" / "assets" / "astronaut.jpg"


def iou(a, b):
  return float(detection.box_iou(np.asarray(a, np.float64), np.asarray(b, np.float64)[None])[0])


@pytest.fixture(scope="module")
def portrait():
  return image_io.read_image(PORTRAIT)


def test_portrait_one_face_near_its_stored_box(portrait):
  boxes, scores = detection.detect_faces(portrait)
  assert boxes.shape == (1, 4) and scores.shape == (1,)
  assert boxes.dtype == np.float32 and scores.dtype == np.float32
  assert scores[0] > 0.8
  stored = np.asarray(json.loads(PORTRAIT.with_suffix(".json").read_text())["box"])
  # The stored box is hand-drawn with a margin (120 x 136 px); ours is the landmark box.
  centre = (boxes[0, :2] + boxes[0, 2:]) / 2
  assert np.linalg.norm(centre - (stored[:2] + stored[2:]) / 2) < 10
  assert iou(boxes[0], stored) > 0.45
  size = boxes[0, 2:] - boxes[0, :2]
  assert np.all((size > 80) & (size < 130))


def test_portrait_mirrored_and_two_faces(portrait):
  boxes, _ = detection.detect_faces(portrait)
  width = portrait.shape[1]
  mirrored, _ = detection.detect_faces(portrait[:, ::-1].copy())
  expected = np.array([width - boxes[0, 2], boxes[0, 1], width - boxes[0, 0], boxes[0, 3]])
  assert mirrored.shape == (1, 4)
  # BlazeFace itself is mirror-equivariant to ~2 px here, its keypoints less so (turn -0.005 vs
  # +0.036, nod 0.218 vs 0.238), and the correction's turn and nod slopes carry that into the
  # box: 6 px. The correction alone is exactly equivariant (test_correction_is_mirror_symmetric).
  np.testing.assert_allclose(mirrored[0], expected, atol=6)
  # 1024 x 512, two faces of 1/11 of the side: too small for the whole-image pass, found by the
  # half-size tiles (upsample=2), the two best detections.
  pair = np.concatenate([portrait, portrait[:, ::-1]], axis=1)
  found, scores = detection.detect_faces(pair, upsample=2)
  assert len(found) >= 2
  assert np.all(np.diff(scores) <= 0)
  assert scores[1] > 0.8
  centres = np.sort((found[:2, 0] + found[:2, 2]) / 2)
  np.testing.assert_allclose(centres, [(boxes[0, 0] + boxes[0, 2]) / 2,
                                       width + (expected[0] + expected[2]) / 2], atol=8)


def test_uncorrected_box_and_correction_round_trip(portrait):
  raw, _, keypoints = detection.detect_faces(portrait, correct=False, return_keypoints=True)
  corrected, _ = detection.detect_faces(portrait)
  turn = detection.head_turn(raw, keypoints)
  np.testing.assert_allclose(detection.correct_boxes(raw, turn=turn,
                                                   roll=detection.head_roll(keypoints),
                                                   nod=detection.head_nod(raw, keypoints)),
                             corrected, atol=1e-3)
  identity = dict(shift_x=0.0, shift_y=0.0, scale_w=1.0, scale_h=1.0)
  np.testing.assert_allclose(detection.correct_boxes(raw, identity), raw, atol=1e-4)


def test_face_free_images_give_no_detection():
  """A flat image and one generated face-free image of each kind give no detection (the rate
  over 300 generated images, not zero, is in experiments/results/eval_detection_summary.json)."""
  flat = np.full((300, 400, 3), 128, np.uint8)
  assert len(detection.detect_faces(flat)[0]) == 0
  # Index 5, a Mandelbrot render (blue discs on a skin-coloured ground), is one of the known
  # false detections (score 0.74); the others of the first two rounds of kinds give none.
  for index in (0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11):
    image, kind = evaluation.face_free_image(index)
    boxes, scores = detection.detect_faces(image)
    assert len(boxes) == 0, (kind, scores)


@pytest.mark.parametrize("image, message", [
    ([[1, 2, 3]], "NumPy image"),
    (np.zeros((10, 10, 2), np.uint8), "RGB"),
    (np.zeros((10, 10, 3, 1), np.uint8), "RGB"),
    (np.zeros((10, 10, 3), np.float32), "uint8"),
    (np.zeros((0, 10, 3), np.uint8), "too small"),
])
def test_bad_input(image, message):
  with pytest.raises(ValueError, match=message):
    detection.detect_faces(image)


def test_grey_and_rgba_images_are_the_rgb_image_they_show(portrait):
  """A grey image is detected as its three-equal-channel RGB image; an opaque RGBA image as its
  RGB image; a fully transparent one is white: no face."""
  grey = np.round(portrait.mean(axis=-1)).astype(np.uint8)
  expected = detection.detect_faces(np.repeat(grey[..., None], 3, axis=-1))
  assert len(expected[0]) == 1
  for image in (grey, grey[..., None]):
    got = detection.detect_faces(image)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
  opaque = np.concatenate([portrait, np.full(portrait.shape[:2] + (1,), 255, np.uint8)], -1)
  np.testing.assert_array_equal(detection.detect_faces(opaque)[0],
                                detection.detect_faces(portrait)[0])
  assert len(detection.detect_faces(np.zeros_like(opaque))[0]) == 0


def test_bad_options(portrait):
  with pytest.raises(ValueError, match="upsample"):
    detection.detect_faces(portrait, upsample=3)
  with pytest.raises(FileNotFoundError):
    detection.FaceDetector("/nonexistent/model.npz")


def test_anchors_and_decode():
  anchors = detection.ssd_anchors()
  assert anchors.shape == (896, 2)
  np.testing.assert_allclose(anchors[0], [0.5 / 16, 0.5 / 16])
  np.testing.assert_allclose(anchors[512], [0.5 / 8, 0.5 / 8])
  regressors = np.zeros((896, 16), np.float32)
  regressors[0, :4] = [12.8, -6.4, 25.6, 12.8]  # 128-px input units
  boxes, scores = detection.decode(regressors, np.zeros((896, 1), np.float32), anchors)
  assert boxes.shape == (896, 16)
  np.testing.assert_allclose(np.asarray(boxes[0, 4:]), np.tile(anchors[0], 6), atol=1e-6)
  np.testing.assert_allclose(np.asarray(boxes[0, :4]), [0.03125 + 0.1 - 0.1, 0.03125 - 0.05 - 0.05,
                                                    0.03125 + 0.1 + 0.1, 0.03125 - 0.05 + 0.05],
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(scores), 0.5)


def test_mirror_anchor_ids_pair_mirror_positions():
  anchors = detection.ssd_anchors()
  mirror = detection.mirror_anchor_ids(anchors)
  np.testing.assert_array_equal(mirror[mirror], np.arange(len(anchors)))  # an involution
  np.testing.assert_allclose(anchors[mirror], np.stack([1 - anchors[:, 0], anchors[:, 1]], 1),
                             atol=1e-6)
  np.testing.assert_array_equal(mirror[:2], [30, 31])  # stride 8, 2 per cell: row 0, cell 15
  with pytest.raises(ValueError, match="symmetric"):
    detection.mirror_anchor_ids(np.array([[0.25, 0.5]]))


def test_mirror_averaged_scores_are_mirror_invariant(portrait):
  """Planted symmetry: with mirror averaging an image and its mirror image score each face the
  same (each is the other's flipped input)."""
  flipped = portrait[:, ::-1].copy()
  _, a = detection.detect_faces(portrait, min_score=0.3, mirror=True)
  _, b = detection.detect_faces(flipped, min_score=0.3, mirror=True)
  assert len(a) >= 1 and a[0] > 0.8
  np.testing.assert_allclose(np.sort(a), np.sort(b), atol=2e-3)


def test_weighted_nms_merges_overlaps_and_sorts():
  boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [0, 0, 10, 10]], float)
  scores = np.array([0.6, 0.9, 0.7, 0.3])
  merged, kept = detection.weighted_nms(boxes, scores, 0.3)
  np.testing.assert_allclose(kept, [0.9, 0.7])
  # First box: score-weighted mean of the three overlapping boxes.
  expected_x0 = (0.9 * 1 + 0.6 * 0 + 0.3 * 0) / 1.8
  np.testing.assert_allclose(merged[0, 0], expected_x0, atol=1e-5)
  np.testing.assert_allclose(merged[1], [50, 50, 60, 60])
  empty_boxes, empty_scores = detection.weighted_nms(np.zeros((0, 4)), np.zeros(0))
  assert empty_boxes.shape == (0, 4) and empty_scores.shape == (0,)


@pytest.mark.parametrize("strides, padding, size", [((1, 1), "SAME", 9), ((2, 2), "SAME", 9),
                                                     ((2, 2), "SAME", 8), ((1, 1), "VALID", 7)])
def test_depthwise_conv_matches_grouped_convolution(strides, padding, size):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, size, size, 5)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 5)).astype(np.float32)
  ours = tflite_graph.depthwise_conv(x, kernel, strides, padding)
  reference = jax.lax.conv_general_dilated(
      x, kernel[None], strides, padding, dimension_numbers=("NHWC", "IHWO", "NHWC"),
      feature_group_count=5, precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), atol=1e-5)
  jitted = jax.jit(lambda a, b: tflite_graph.depthwise_conv(a, b, strides, padding))
  np.testing.assert_allclose(np.asarray(jitted(x, kernel)), np.asarray(ours), atol=1e-6)


def test_fit_box_correction_recovers_planted_map():
  planted = dict(shift_x=0.02, shift_y=-0.06, scale_w=1.1, scale_h=1.2)
  rng = np.random.default_rng(1)
  faces = []
  for k in range(7):
    landmarks = rng.uniform(20, 60, (68, 2)).astype(np.float32) + k
    faces.append((f"f{k}", np.zeros((100, 100, 3), np.uint8), landmarks))

  def detect(image, name):
    del image
    landmarks = faces[int(name[1:])][2]
    box = np.concatenate([landmarks.min(0), landmarks.max(0)]).astype(np.float64)
    size = (box[2:] - box[:2]) / [planted["scale_w"], planted["scale_h"]]
    centre = (box[:2] + box[2:]) / 2 - size * [planted["shift_x"], planted["shift_y"]]
    decoy = np.array([[0, 0, 5, 5]], np.float64)
    return np.concatenate([decoy, [np.r_[centre - size / 2, centre + size / 2]]]), np.ones(2)

  fit = evaluation.fit_box_correction(faces, detect)
  for key, value in planted.items():
    assert fit[key] == pytest.approx(value, abs=1e-3)
  assert fit["num_used"] == 7


def test_face_free_images_are_seeded_uint8():
  for index in range(len(evaluation.FACE_FREE_KINDS)):
    a, kind = evaluation.face_free_image(index, size=64)
    b, _ = evaluation.face_free_image(index, size=64)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and kind in evaluation.FACE_FREE_KINDS
    np.testing.assert_array_equal(a, b)
    assert a.std() > 0


def test_finds_faces_of_aflw_photos():
  from data_pipeline import readers
  pairs = readers.list_aflw2000(require(AFLW_DIR))[:12]
  hits = 0
  for image_path, mat_path in pairs:
    landmarks = readers.read_aflw2000(mat_path).landmarks_px
    truth = np.concatenate([landmarks.min(0), landmarks.max(0)])
    boxes, _ = detection.detect_faces(image_io.read_image(image_path))
    hits += bool(len(boxes)) and max(iou(truth, b) for b in boxes) >= 0.5
  assert hits >= 11


@pytest.mark.slow
def test_eval_detection_command(tmp_path):
  """The command end to end on 3 photos with another detector's boxes (the truth boxes of two,
  none for the third) and 2 face-free images, the cascade mirrored, plus its bad-input line."""
  from data_pipeline import readers
  pairs = readers.list_aflw2000(require(AFLW_DIR))[:3]
  table = {}
  for k, (image_path, mat_path) in enumerate(pairs):
    landmarks = readers.read_aflw2000(mat_path).landmarks_px
    table[image_path.name] = ([] if k == 2 else
                              [[*landmarks.min(0).tolist(), *landmarks.max(0).tolist(), 0.9]])
  table["face_free_0000"] = [[1, 1, 50, 50, 0.6]]
  table["face_free_0001"] = []
  data = tmp_path / "aflw"
  data.mkdir()
  for image_path, mat_path in pairs:
    os.symlink(image_path, data / image_path.name)
    os.symlink(mat_path, data / mat_path.name)
  (tmp_path / "dets.json").write_text(json.dumps(table))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.eval_detection", f"--data_dir={data}",
       f"--out_dir={tmp_path / 'out'}", f"--detections={tmp_path / 'dets.json'}",
       "--num_face_free=2", "--batch_size=2", "--detector_name=truth", "--refine=0",
       "--cascade_mirror"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((tmp_path / "out" / "summary.json").read_text())
  assert summary["detector"] == "truth" and summary["num_images"] == 3
  assert summary["refine_passes"] == 0  # so a truth box as detection scores as the truth box
  assert summary["cascade_mirror"] is True and summary["mirror"] is None
  assert summary["face_free"]["false_detections_per_image"] == 0.5
  assert summary["detections_per_photo"] == pytest.approx(2 / 3, abs=1e-3)
  rows = [json.loads(line) for line in (tmp_path / "out" / "per_image.jsonl").read_text().splitlines()]
  assert rows[2]["best_nme"] is None and rows[0]["best_iou"] == pytest.approx(1.0)
  assert rows[0]["best_nme"] == pytest.approx(rows[0]["truth_box_nme"], abs=1e-4)
  bad = subprocess.run(
      [sys.executable, "-m", "experiments.eval_detection", f"--out_dir={tmp_path / 'bad'}",
       f"--detections={tmp_path / 'dets.json'}", "--box_correction=1,2,3"],
      cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1].startswith("eval_detection: error: ")
  assert not (tmp_path / "bad").exists()


def test_portrait_keypoints_in_face_order(portrait):
  boxes, _, keypoints = detection.detect_faces(portrait, correct=False, return_keypoints=True)
  assert keypoints.shape == (1, 6, 2)
  points = dict(zip(detection.KEYPOINTS, keypoints[0]))
  eyes_y = (points["left_eye"][1] + points["right_eye"][1]) / 2
  assert eyes_y < points["nose_tip"][1] < points["mouth"][1]
  assert np.all((keypoints[0, :4] > boxes[0, :2]) & (keypoints[0, :4] < boxes[0, 2:]))
  assert abs(detection.head_turn(boxes, keypoints)[0]) < 0.1  # a frontal portrait


def test_correction_turn_terms():
  boxes = np.array([[0, 0, 100, 100], [0, 0, 100, 100]], np.float32)
  correction = dict(shift_x=0.0, shift_y=0.1, scale_w=1.0, scale_h=1.0, shift_x_turn=0.5,
                    shift_y_turn=0.0, scale_w_turn=-1.0, scale_h_turn=0.0)
  out = detection.correct_boxes(boxes, correction, turn=np.array([0.0, -0.2]))
  np.testing.assert_allclose(out[0], [0, 10, 100, 110], atol=1e-4)
  # turn -0.2: centre moves by 0.5 * -0.2 * 100 = -10 px, width 1 - 0.2 = 0.8.
  np.testing.assert_allclose(out[1], [50 - 10 - 40, 10, 50 - 10 + 40, 110], atol=1e-4)
  keypoints = np.zeros((1, 6, 2), np.float32)
  keypoints[0, :3, 0] = [40, 60, 70]  # eyes at 40 / 60, nose tip at 70
  assert detection.head_turn(boxes[:1], keypoints)[0] == pytest.approx(0.2)


def test_fit_box_correction_recovers_turn_slopes():
  planted = dict(shift_x=0.0, shift_x_turn=0.3, shift_y=0.05, shift_y_turn=-0.1, scale_w=0.9,
                 scale_w_turn=-0.25, scale_h=0.95, scale_h_turn=0.1)
  rng = np.random.default_rng(2)
  faces, detections = [], {}
  for k in range(40):
    box = np.array([100, 100, 200, 220], np.float64) + rng.uniform(-20, 20, 4)
    turn = rng.uniform(-0.3, 0.3)
    keypoints = np.zeros((6, 2))
    keypoints[:2, 0] = [140, 160]
    keypoints[2, 0] = 150 + turn * (box[2] - box[0])
    truth = detection.correct_boxes(box[None], planted, turn=np.array([turn]))[0]
    landmarks = np.array([truth[:2], truth[2:]] * 34, np.float32)
    faces.append((f"f{k}", np.zeros((8, 8, 3), np.uint8), landmarks))
    detections[f"f{k}"] = (box[None], np.ones(1), keypoints[None])
  fit = evaluation.fit_box_correction(faces, lambda image, name: detections[name])
  for key, value in planted.items():
    assert fit[key] == pytest.approx(value, abs=2e-3), key


def _rotate(points, angle, centre):
  c, s = np.cos(angle), np.sin(angle)
  offset = np.asarray(points, np.float64) - centre
  return centre + np.stack([offset[..., 0] * c - offset[..., 1] * s,
                            offset[..., 0] * s + offset[..., 1] * c], axis=-1)


def test_head_roll_and_turn_in_the_face_frame():
  """Planted keypoints of an upright face (turn 0.2 of a 100 px box, nod 0.15), turned by 30
  degrees about the box centre: the roll is 30 degrees whichever eye comes first, the turn and
  the nod unchanged."""
  box = np.array([[0, 0, 100, 100]], np.float32)
  upright = np.zeros((6, 2))
  upright[:3] = [[40, 45], [60, 45], [70, 60]]  # eyes, nose tip 20 px right of their midpoint
  turned = _rotate(upright, np.radians(30), np.array([50.0, 50.0]))[None]
  assert detection.head_roll(turned)[0] == pytest.approx(np.radians(30), abs=1e-5)
  assert detection.head_roll(turned[:, [1, 0, 2, 3, 4, 5]])[0] == pytest.approx(np.radians(30),
                                                                                 abs=1e-5)
  assert detection.head_turn(box, turned)[0] == pytest.approx(0.2, abs=1e-5)
  assert detection.head_turn(box, upright[None])[0] == pytest.approx(0.2, abs=1e-6)
  assert detection.head_nod(box, turned)[0] == pytest.approx(0.15, abs=1e-5)
  assert detection.head_nod(box, upright[None])[0] == pytest.approx(0.15, abs=1e-6)


def test_correction_with_roll_planted_boxes():
  """Identity scales on a 100 x 60 box: at 90 degrees the box turns into 60 x 100 and a shift
  down the face moves it left; at 45 degrees the half sizes are the rectangle's (a + b) / sqrt 2
  with roll_fill 1 and the ellipse's sqrt((a^2 + b^2) / 2) with roll_fill 0; zero roll is the
  old affine map."""
  box = np.array([[0, 0, 100, 60]], np.float32)
  base = dict(shift_x=0.0, shift_y=0.1, scale_w=1.0, scale_h=1.0)
  out = detection.correct_boxes(box, base, roll=np.array([np.pi / 2]))
  np.testing.assert_allclose(out[0], [50 - 6 - 30, 30 - 50, 50 - 6 + 30, 30 + 50], atol=1e-3)
  for fill, half in ((1.0, (50 + 30) / np.sqrt(2)), (0.0, np.sqrt((50 ** 2 + 30 ** 2) / 2))):
    out = detection.correct_boxes(box, dict(base, shift_y=0.0, roll_fill=fill),
                                  roll=np.array([np.pi / 4]))
    np.testing.assert_allclose(out[0], [50 - half, 30 - half, 50 + half, 30 + half], atol=1e-3)
  np.testing.assert_allclose(detection.correct_boxes(box, base, roll=np.zeros(1)),
                             detection.correct_boxes(box, base), atol=1e-5)


@pytest.mark.parametrize("outline, fill", [("rectangle", 1.0), ("ellipse", 0.0)])
def test_fit_box_correction_recovers_terms_on_turned_faces(outline, fill):
  """Planted faces whose own landmark box follows the planted lines in the turn and the nod,
  turned in the image by up to 35 degrees: the fit recovers every slope and the roll fill of the
  outline (1 for a rectangle of points, 0 for an ellipse)."""
  planted = dict(shift_x=0.0, shift_x_turn=0.3, shift_y=0.05, shift_y_turn=-0.1, scale_w=0.9,
                 scale_w_turn=-0.25, scale_h=0.95, scale_h_turn=0.1, shift_y_nod=0.4,
                 scale_w_nod=-0.6, scale_h_nod=-0.3)
  rng = np.random.default_rng(3)
  angles = np.linspace(0, 2 * np.pi, 360, endpoint=False)
  shape = (np.stack([np.cos(angles), np.sin(angles)], 1) if outline == "ellipse" else
           np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64))
  faces, detections = [], {}
  for k in range(40):
    box = np.array([100, 100, 200, 220], np.float64) + rng.uniform(-20, 20, 4)
    centre = (box[:2] + box[2:]) / 2
    turn, roll, nod = rng.uniform(-0.3, 0.3), rng.uniform(-0.6, 0.6), rng.uniform(0.1, 0.3)
    upright = np.zeros((6, 2))
    upright[:2] = [[centre[0] - 10, centre[1] - 10], [centre[0] + 10, centre[1] - 10]]
    upright[2] = [centre[0] + turn * (box[2] - box[0]), centre[1] - 10 + nod * (box[3] - box[1])]
    face = detection.correct_boxes(box[None], planted, turn=np.array([turn]),
                                   nod=np.array([nod]))[0]
    points = (face[:2] + face[2:]) / 2 + shape * (face[2:] - face[:2]) / 2
    faces.append((f"f{k}", np.zeros((8, 8, 3), np.uint8),
                  _rotate(points, roll, centre).astype(np.float32)))
    detections[f"f{k}"] = (box[None], np.ones(1), _rotate(upright, roll, centre)[None])
  fit = evaluation.fit_box_correction(faces, lambda image, name: detections[name])
  for key, value in planted.items():
    assert fit[key] == pytest.approx(value, abs=2e-3), key
  assert fit["roll_fill"] == pytest.approx(fill, abs=0.02)


def test_correction_is_mirror_symmetric():
  """Mirrored boxes and keypoints (left and right eye swapping sides) give the mirrored corrected
  box, for turned, rolled and nodding faces."""
  rng = np.random.default_rng(5)
  width = 400.0
  boxes = np.array([[100, 120, 200, 220], [220, 40, 330, 150]], np.float32)
  keypoints = np.zeros((2, 6, 2), np.float32)
  for k, box in enumerate(boxes):
    keypoints[k] = box[:2] + rng.uniform(0.2, 0.8, (6, 2)) * (box[2:] - box[:2])
  keypoints[:, 0, 1] = keypoints[:, 1, 1] - [8, -5]  # rolled both ways
  mirror_boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
  mirror_keypoints = keypoints.copy()
  mirror_keypoints[..., 0] = width - keypoints[..., 0]

  def corrected(b, kp):
    return detection.correct_boxes(b, turn=detection.head_turn(b, kp),
                                   roll=detection.head_roll(kp), nod=detection.head_nod(b, kp))

  out, mirrored = corrected(boxes, keypoints), corrected(mirror_boxes, mirror_keypoints)
  np.testing.assert_allclose(
      mirrored, np.stack([width - out[:, 2], out[:, 1], width - out[:, 0], out[:, 3]], 1),
      atol=1e-3)
