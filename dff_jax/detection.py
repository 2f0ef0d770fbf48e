"""Faces without a box: a face detector for :mod:`dff_jax.alignment` (MediaPipe BlazeFace in JAX).

:func:`detect_faces` finds every face of an RGB image and returns boxes in the convention the
alignment cascade was trained around (the bounding box of the 68 landmarks), sorted by score.

**The network.** MediaPipe's short-range BlazeFace (Bazarevsky et al., "BlazeFace: Sub-millisecond
Neural Face Detection on Mobile GPUs", arXiv 1907.05047): a 128 x 128 single-shot detector with
896 anchors (16 x 16 x 2 at stride 8, 8 x 8 x 6 at stride 16), each giving a score and a box
(centre offset, width, height) and 6 keypoints (eyes, nose tip, mouth, tragions). Its weights
(float16, 0.3 MB) and operator graph ship in ``dff_jax/assets/blazeface_short_range.npz``,
converted unchanged from MediaPipe's ``face_detection_short_range.tflite`` by
``python -m experiments.convert_blazeface`` (:func:`dff_jax.tflite_graph.convert`; MediaPipe,
Apache-2.0, ``dff_jax/assets/LICENSE-MediaPipe.txt``). The graph (CONV_2D, DEPTHWISE_CONV_2D, ADD, RELU, PAD, MAX_POOL_2D, RESHAPE, CONCATENATION, DEQUANTIZE) is run by
:func:`dff_jax.tflite_graph.run_graph` with ``jax.lax`` convolutions and compiled once; nothing is
downloaded. The graph format, its conversion from ``.tflite`` and its interpreter live in
:mod:`dff_jax.tflite_graph` (a model-independent idea); this module holds BlazeFace's anchors,
decoding, non-maximum suppression, box correction and pre-processing.

**Pre- and post-processing** follow MediaPipe's face_detection_short_range graph: the image is
letterboxed into a square (black bars), resized to 128 x 128 (Pillow bilinear, antialiased when
shrinking), scaled to [-1, 1]; scores are ``sigmoid(clip(logit, -80, 80))``; boxes above
``min_score`` are merged by *weighted* non-maximum suppression (MediaPipe's: every box overlapping
the best remaining one by IoU > ``iou_threshold`` is averaged into it, weighted by score); the
score threshold is :data:`MIN_SCORE` (0.6, MediaPipe uses 0.5). With ``mirror=True`` (an
option) each anchor's score is the mean of its score on the input and its mirror anchor's
(:func:`mirror_anchor_ids`) on the left-right flipped input, one batched call; the boxes are the
input's own. A face scores about the same both ways, a chance pattern often does not: on the
generated face-free images this halves the false detections at the same threshold, for about
1.3x the detector's time and no gain in recall (WORKSPACE.md section 11).

**Box convention.** BlazeFace's box is a square box around the eyes, nose and mouth; the
cascade wants the bounding box of the 68 landmarks it was trained around (brows to chin, jaw to
jaw). :data:`BOX_CORRECTION` maps one to the other: in the face's own frame (turned by the eye
line's roll, :func:`head_roll`) a per-axis affine map (centre shift and size scale as fractions
of the detector box) whose terms vary linearly with head-turn and nod proxies from BlazeFace's
keypoints (:func:`head_turn`, :func:`head_nod`), then the axis-aligned box around the turned
face; fitted on synthetic training renders
(``python -m experiments.eval_detection --fit_box_correction --fit_on=synthetic``; WORKSPACE.md
section 11), never on AFLW2000-3D.

Frames: boxes are ``(x0, y0, x1, y1)`` in image pixels, x right, y down, pixel ``(i, j)`` centred
at ``(j + 0.5, i + 0.5)`` (so the image spans ``[0, W] x [0, H]``).

Note: short-range BlazeFace is made for faces that fill a fair part of the image (selfies,
portraits, face crops: faces larger than about 1/10 of the longer image side). ``upsample=2``
also runs it on 3 x 3 overlapping tiles of half the image side (one batched call), which finds
faces down to about 1/20 of the side, at about 10x the time and with about 3x the false
detections (WORKSPACE.md section 11); tile detections only add faces the whole-image pass missed.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from dff_jax import image_io
from dff_jax.tflite_graph import load_graph, run_graph

Array = Any

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL = ASSETS / "blazeface_short_range.npz"
DETECTOR_NAME = "blazeface_short_range (MediaPipe, Apache-2.0) in JAX"
INPUT_SIZE = 128
# BlazeFace's keypoints, in its output order ("left" / "right" as MediaPipe names them).
KEYPOINTS = ("left_eye", "right_eye", "nose_tip", "mouth", "left_tragion", "right_tragion")
# SSD anchors of MediaPipe's face_detection_short_range_common.pbtxt.
ANCHOR_STRIDES = (8, 16, 16, 16)
RAW_SCORE_LIMIT = 80.0
# Score threshold: the smallest of 0.5 (MediaPipe's), 0.55, 0.6, ... giving under 0.03 false
# detections per generated face-free image (0.093 at 0.5, 0.027 at 0.6; WORKSPACE.md section 11).
MIN_SCORE = 0.6
MAX_IMAGE_PIXELS = 50_000_000

# Detector box -> landmark bounding box (the box the cascade was trained around), see
# correct_boxes: in the face's own frame (turned by the eye line's roll, head_roll), centre shift
# and size scale as fractions of the detector box, each a straight line in the head turn t
# (head_turn: nose tip vs eye midpoint along the eye line) and in the nod (head_nod: the same
# across it), then the axis-aligned box around the turned face (rotated_extent, roll_fill).
# Fitted (robust least squares) on 941 of 1000 synthetic *training* renders of the cascade
# (seed 20000, full yaw range, roll up to 20 and pitch up to 25 degrees, the jaw on the
# silhouette as in training; the other renders had no matching detection) by
#   python -m experiments.eval_detection --fit_box_correction --fit_on=synthetic \
#       --num_fit_faces=1000 --out_dir=DIR
# (never on AFLW2000-3D; experiments/results/box_correction_synthetic_nod.json). At large turn
# the detector box sits towards the back of the head and is too wide: shift_x_turn > 0 moves it
# towards the nose (shift_x is odd in the turn: a mirrored face gets the mirrored box),
# scale_w_turn < 0 narrows it; a raised chin (small nod) needs a larger box (scale_*_nod < 0).
# roll_fill near 0: the 68 points turn like an ellipse, not like the corners of their box.
BOX_CORRECTION = dict(shift_x=0.0, shift_y=-0.1575, scale_w=1.2178, scale_h=0.9659,
                      shift_x_turn=0.3563, shift_y_turn=0.2581, scale_w_turn=-1.0565,
                      scale_h_turn=0.124, roll_fill=0.0825, shift_y_nod=0.818,
                      scale_w_nod=-0.8969, scale_h_nod=-0.2445)


# ----------------------------------------------------------------------------------------------
# Anchors, decoding, NMS
# ----------------------------------------------------------------------------------------------


def ssd_anchors(input_size: int = INPUT_SIZE,
                strides: Sequence[int] = ANCHOR_STRIDES) -> np.ndarray:
  """``[896, 2]`` anchor centres (x, y) in [0, 1] of the input square (MediaPipe's
  SsdAnchorsCalculator with ``interpolated_scale_aspect_ratio = 1``, fixed anchor size: two
  anchors per layer sharing a stride, in row-major cell order)."""
  anchors: List[Tuple[float, float]] = []
  layer = 0
  while layer < len(strides):
    last = layer
    repeats = 0
    while last < len(strides) and strides[last] == strides[layer]:
      last += 1
      repeats += 2
    cells = input_size // strides[layer]
    for y in range(cells):
      for x in range(cells):
        anchors += [((x + 0.5) / cells, (y + 0.5) / cells)] * repeats
    layer = last
  return np.asarray(anchors, np.float32)


def mirror_anchor_ids(anchors: np.ndarray) -> np.ndarray:
  """``[A]`` int: the anchor at the left-right mirror position of each anchor (centre
  ``(1 - x, y)``; anchors sharing a centre are paired in their order), an involution."""
  groups: Dict[Tuple[float, float], List[int]] = {}
  for k, (x, y) in enumerate(np.asarray(anchors, np.float64)):
    groups.setdefault((round(float(x), 6), round(float(y), 6)), []).append(k)
  mirror = np.empty(len(anchors), np.int64)
  for (x, y), ids in groups.items():
    partners = groups.get((round(1.0 - x, 6), y))
    if partners is None or len(partners) != len(ids):
      raise ValueError(f"anchors are not left-right symmetric at ({x}, {y})")
    mirror[ids] = partners
  return mirror


def decode(regressors: Array, logits: Array, anchors: Array,
           input_size: int = INPUT_SIZE) -> Tuple[Array, Array]:
  """Raw outputs -> boxes (with keypoints) and scores in the unit input square.

  Args:
    regressors: ``[..., A, 16]`` (centre dx, dy, w, h, then 6 keypoints dx, dy), input pixels.
    logits: ``[..., A, 1]`` face logits.
    anchors: ``[A, 2]`` from :func:`ssd_anchors`.

  Returns:
    ``[..., A, 16]`` rows ``(x0, y0, x1, y1, then the 6 keypoints (x, y))`` in [0, 1] units of
    the input square (keypoints: :data:`KEYPOINTS`), and scores ``[..., A]``.
  """
  centre = regressors[..., 0:2] / input_size + anchors
  half = regressors[..., 2:4] / input_size / 2
  keypoints = regressors[..., 4:16].reshape(*regressors.shape[:-1], 6, 2) / input_size
  keypoints = (keypoints + anchors[:, None, :]).reshape(*regressors.shape[:-1], 12)
  boxes = jnp.concatenate([centre - half, centre + half, keypoints], axis=-1)
  scores = jax.nn.sigmoid(jnp.clip(logits[..., 0], -RAW_SCORE_LIMIT, RAW_SCORE_LIMIT))
  return boxes, scores


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """IoU of ``box [4]`` with each of ``boxes [N, 4]`` (x0, y0, x1, y1)."""
  low = np.maximum(box[:2], boxes[:, :2])
  high = np.minimum(box[2:], boxes[:, 2:])
  inter = np.prod(np.clip(high - low, 0, None), axis=-1)
  area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)
  union = area(box) + area(boxes) - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray,
                 iou_threshold: float = 0.3) -> Tuple[np.ndarray, np.ndarray]:
  """MediaPipe's weighted non-maximum suppression (NumPy).

  Repeatedly takes the best remaining box; every remaining box with IoU > ``iou_threshold``
  with it (itself included) is removed and averaged into one box weighted by score; the merged
  box keeps the best score.

  Args:
    boxes: ``[N, 4 + E]`` (x0, y0, x1, y1, then E extra values averaged alike, e.g. keypoints);
      scores: ``[N]``.

  Returns:
    ``boxes [M, 4 + E]``, ``scores [M]`` float32, by descending score.
  """
  boxes = np.asarray(boxes, np.float64)
  width = boxes.shape[-1] if boxes.ndim == 2 else 4
  boxes = boxes.reshape(-1, width)
  scores = np.asarray(scores, np.float64).reshape(-1)
  order = np.argsort(-scores, kind="stable")
  boxes, scores = boxes[order], scores[order]
  kept_boxes, kept_scores = [], []
  while len(scores):
    overlap = box_iou(boxes[0, :4], boxes[:, :4]) > iou_threshold
    overlap[0] = True
    weights = scores[overlap]
    kept_boxes.append((boxes[overlap] * weights[:, None]).sum(0) / weights.sum())
    kept_scores.append(scores[0])
    boxes, scores = boxes[~overlap], scores[~overlap]
  return (np.asarray(kept_boxes, np.float32).reshape(-1, width),
          np.asarray(kept_scores, np.float32))


def head_roll(keypoints: np.ndarray) -> np.ndarray:
  """``[N]`` float32 in-plane rotation (radians, in ``(-pi/2, pi/2]``) of the line through the
  eyes: ``atan2(dy, dx)`` of the eye-to-eye vector taken left to right in the image (image
  frame, y down, so positive when the face is turned clockwise on screen).
  ``keypoints [N, 6, 2]`` (:data:`KEYPOINTS`)."""
  keypoints = np.asarray(keypoints, np.float32).reshape(-1, 6, 2)
  vector = keypoints[:, 1] - keypoints[:, 0]
  vector = np.where(vector[:, :1] < 0, -vector, vector)
  return np.arctan2(vector[:, 1], vector[:, 0]).astype(np.float32)


def to_face_frame(offsets: np.ndarray, roll: np.ndarray) -> np.ndarray:
  """Image offsets ``[N, ..., 2]`` (pixels, x right, y down) turned by ``-roll [N]`` radians:
  their components along and across the eye line (:func:`head_roll`). ``-roll`` turns back."""
  offsets = np.asarray(offsets)
  shape = (-1,) + (1,) * (offsets.ndim - 2)
  c, s = np.cos(roll).reshape(shape), np.sin(roll).reshape(shape)
  x, y = offsets[..., 0], offsets[..., 1]
  return np.stack([x * c + y * s, -x * s + y * c], axis=-1)


def _nose_in_face_frame(keypoints: np.ndarray) -> np.ndarray:
  """``[N, 2]`` nose tip minus eye midpoint along and across the eye line, pixels."""
  keypoints = np.asarray(keypoints, np.float32).reshape(-1, 6, 2)
  offset = keypoints[:, 2] - (keypoints[:, 0] + keypoints[:, 1]) / 2
  return to_face_frame(offset, head_roll(keypoints))


def head_turn(boxes: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
  """``[N]`` signed head-turn proxy: (nose tip - eye midpoint) / box width along the eye line
  (:func:`head_roll`; for an upright face the image x, so positive when the nose points to the
  image right). ``keypoints [N, 6, 2]`` (:data:`KEYPOINTS`)."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  return _nose_in_face_frame(keypoints)[:, 0] / np.maximum(boxes[:, 2] - boxes[:, 0], 1e-6)


def head_nod(boxes: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
  """``[N]`` nod proxy: (nose tip - eye midpoint) / box height across the eye line
  (:func:`head_roll`), positive downwards on the face; smaller when the chin is raised, larger
  when the head bows. ``keypoints [N, 6, 2]`` (:data:`KEYPOINTS`)."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  return _nose_in_face_frame(keypoints)[:, 1] / np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)


def rotated_extent(half_w: np.ndarray, half_h: np.ndarray, roll: np.ndarray, fill: float
                   ) -> Tuple[np.ndarray, np.ndarray]:
  """Half sizes of the axis-aligned box around a face whose own (upright) landmark box has half
  sizes ``(half_w, half_h)``, turned in the image plane by ``roll`` radians.

  The 68 points fill neither their box (the chin is round) nor an ellipse: the result is
  ``fill`` of the way from the inscribed ellipse's extent ``sqrt(w^2 cos^2 + h^2 sin^2)`` to the
  rectangle's ``w |cos| + h |sin|`` (equal, and the box itself, at zero roll).
  """
  c, s = np.abs(np.cos(roll)), np.abs(np.sin(roll))
  ellipse = (np.sqrt((half_w * c) ** 2 + (half_h * s) ** 2),
             np.sqrt((half_w * s) ** 2 + (half_h * c) ** 2))
  rectangle = (half_w * c + half_h * s, half_w * s + half_h * c)
  return tuple(e + fill * (r - e) for e, r in zip(ellipse, rectangle))


def correct_boxes(boxes: np.ndarray, correction: Optional[Dict[str, float]] = None,
                  turn: Optional[np.ndarray] = None, roll: Optional[np.ndarray] = None,
                  nod: Optional[np.ndarray] = None) -> np.ndarray:
  """Detector boxes ``[N, 4]`` -> landmark-box convention (:data:`BOX_CORRECTION`).

  In the face's own frame (the image turned by ``-roll``, :func:`head_roll`; 0 when ``None``),
  with ``t = turn`` (:func:`head_turn`; 0 when ``None``) and ``a = |t|``: the centre moves by
  ``((shift_x + shift_x_turn * t) * w, (shift_y + shift_y_turn * a) * h)`` and the landmark box
  is ``w' = (scale_w + scale_w_turn * a) * w`` by ``h' = (scale_h + scale_h_turn * a) * h``
  (missing ``*_turn`` keys count as 0), each plus ``<name>_nod * nod`` (:func:`head_nod`; 0
  when ``None``, missing keys 0). Back in the image, the shift turns by ``roll`` and the
  box is the axis-aligned box around the turned face (:func:`rotated_extent` with
  ``roll_fill``, default 1). At zero roll this is a per-axis affine map of the box.
  """
  c = BOX_CORRECTION if correction is None else correction
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  t = np.zeros(len(boxes), np.float32) if turn is None else np.asarray(turn, np.float32)
  r = np.zeros(len(boxes), np.float32) if roll is None else np.asarray(roll, np.float32)
  n = np.zeros(len(boxes), np.float32) if nod is None else np.asarray(nod, np.float32)
  a = np.abs(t)

  def term(name, turn_value):
    return c[name] + c.get(name + "_turn", 0.0) * turn_value + c.get(name + "_nod", 0.0) * n

  size = boxes[:, 2:] - boxes[:, :2]
  shift = to_face_frame(size * np.stack([term("shift_x", t), term("shift_y", a)], axis=1), -r)
  scale = np.stack([term("scale_w", a), term("scale_h", a)], axis=1)
  centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + shift
  half = np.stack(rotated_extent(size[:, 0] * scale[:, 0] / 2, size[:, 1] * scale[:, 1] / 2, r,
                                 float(c.get("roll_fill", 1.0))), axis=1)
  return np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The detector
# ----------------------------------------------------------------------------------------------


class FaceDetector:
  """BlazeFace (short range) with its pre- and post-processing; compiled once per batch size.

  Args:
    model_path: a graph file from :func:`dff_jax.tflite_graph.convert` (default: the shipped one).
    correction: the box correction (:func:`correct_boxes`; default :data:`BOX_CORRECTION`).
  """

  name = DETECTOR_NAME

  def __init__(self, model_path: str | Path = DEFAULT_MODEL,
               correction: Optional[Dict[str, float]] = None):
    self.correction = dict(BOX_CORRECTION if correction is None else correction)
    self.graph = load_graph(model_path)
    self.anchors = ssd_anchors()
    self.mirror_ids = mirror_anchor_ids(self.anchors)
    graph, anchors = self.graph, jnp.asarray(self.anchors)

    def forward(images):
      outputs = run_graph(graph, images)
      return decode(outputs["regressors"], outputs["classificators"], anchors)
    self._forward = jax.jit(forward)

  def raw(self, inputs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Boxes with keypoints ``[B, 896, 16]`` (unit input square, see :func:`decode`) and scores
    ``[B, 896]`` for network inputs ``[B, 128, 128, 3]`` float32 in [-1, 1]."""
    boxes, scores = self._forward(jnp.asarray(inputs, jnp.float32))
    return np.asarray(boxes), np.asarray(scores)

  def __call__(self, image: np.ndarray, min_score: float = MIN_SCORE, iou_threshold: float = 0.3,
               upsample: int = 1, correct: bool = True, return_keypoints: bool = False,
               mirror: bool = False):
    """See :func:`detect_faces`."""
    image = check_image(image)
    height, width = image.shape[:2]
    if upsample not in (1, 2):
      raise ValueError(f"upsample must be 1 or 2, got {upsample!r}")
    side = float(max(height, width))
    # Squares (x0, y0, side) in image pixels, each letterboxed to the network input.
    windows = [(-(side - width) / 2, -(side - height) / 2, side)]
    if upsample == 2:
      tile = side / 2
      for row in range(3):
        for col in range(3):
          windows.append((windows[0][0] + col * tile / 2, windows[0][1] + row * tile / 2, tile))
    inputs = np.stack([_network_input(image, *w) for w in windows])
    if mirror:
      boxes, scores = self.raw(np.concatenate([inputs, inputs[:, :, ::-1]]))
      boxes = boxes[:len(windows)]
      scores = (scores[:len(windows)] + scores[len(windows):, self.mirror_ids]) / 2
    else:
      boxes, scores = self.raw(inputs)
    all_boxes, all_scores = [], []
    for (x0, y0, size), b, s in zip(windows, boxes, scores):
      keep = s >= min_score
      all_boxes.append(b[keep] * size + np.tile(np.array([x0, y0], np.float32), 8))
      all_scores.append(s[keep])
    rows, scores = weighted_nms(all_boxes[0], all_scores[0], iou_threshold)
    if len(windows) > 1:
      # Tiles add only the faces the whole-image pass did not find (their boxes are not blended
      # into its boxes, so upsample=2 changes nothing for faces found at the coarse scale).
      tile_rows, tile_scores = weighted_nms(np.concatenate(all_boxes[1:]),
                                            np.concatenate(all_scores[1:]), iou_threshold)
      new = np.array([not len(rows) or box_iou(r[:4], rows[:, :4]).max() <= iou_threshold
                      for r in tile_rows], bool)
      order = np.argsort(-np.concatenate([scores, tile_scores[new]]), kind="stable")
      rows = np.concatenate([rows, tile_rows[new]])[order]
      scores = np.concatenate([scores, tile_scores[new]])[order]
    boxes, keypoints = rows[:, :4], rows[:, 4:].reshape(-1, 6, 2)
    if correct:
      boxes = correct_boxes(boxes, self.correction, turn=head_turn(boxes, keypoints),
                            roll=head_roll(keypoints), nod=head_nod(boxes, keypoints))
    if return_keypoints:
      return boxes.astype(np.float32), scores.astype(np.float32), keypoints.astype(np.float32)
    return boxes.astype(np.float32), scores.astype(np.float32)


def check_image(image: Any) -> np.ndarray:
  """``image`` as ``[H, W, 3]`` uint8 RGB (grey and RGBA uint8 arrays converted by
  :func:`dff_jax.image_io.as_rgb`), or a ValueError saying what is wrong."""
  image = image_io.as_rgb(image)
  if image.shape[0] < 2 or image.shape[1] < 2:
    raise ValueError(f"image of {image.shape[1]}x{image.shape[0]} px is too small")
  if image.shape[0] * image.shape[1] > MAX_IMAGE_PIXELS:
    raise ValueError(f"image of {image.shape[1]}x{image.shape[0]} px is over the "
                     f"{MAX_IMAGE_PIXELS // 1_000_000}-megapixel limit")
  return image


def _network_input(image: np.ndarray, x0: float, y0: float, side: float) -> np.ndarray:
  """The square ``[x0, x0 + side] x [y0, y0 + side]`` of ``image`` (black outside) resized to
  ``[128, 128, 3]`` float32 in [-1, 1] (Pillow bilinear; antialiased when shrinking).

  The whole input pixels whose area lies inside the image are resampled from the exact
  (sub-pixel) source box, so the map input pixel -> image pixel is ``x = x0 + u * side / 128``.
  """
  height, width = image.shape[:2]
  scale = INPUT_SIZE / side
  ox0 = min(max(int(np.ceil(-x0 * scale - 1e-6)), 0), INPUT_SIZE)
  oy0 = min(max(int(np.ceil(-y0 * scale - 1e-6)), 0), INPUT_SIZE)
  ox1 = max(min(int(np.floor((width - x0) * scale + 1e-6)), INPUT_SIZE), ox0)
  oy1 = max(min(int(np.floor((height - y0) * scale + 1e-6)), INPUT_SIZE), oy0)
  canvas = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.float32)
  if ox1 > ox0 and oy1 > oy0:
    source = (x0 + ox0 / scale, y0 + oy0 / scale, x0 + ox1 / scale, y0 + oy1 / scale)
    source = (max(source[0], 0.0), max(source[1], 0.0), min(source[2], float(width)),
              min(source[3], float(height)))
    resized = Image.fromarray(image).resize((ox1 - ox0, oy1 - oy0), Image.BILINEAR, box=source)
    canvas[oy0:oy1, ox0:ox1] = np.asarray(resized, np.float32)
  return canvas / 127.5 - 1.0


@functools.lru_cache(maxsize=2)
def default_detector(model_path: str = str(DEFAULT_MODEL)) -> FaceDetector:
  """The shipped detector, loaded once per process."""
  return FaceDetector(model_path)


def detect_faces(image: np.ndarray, min_score: float = MIN_SCORE, iou_threshold: float = 0.3,
                 upsample: int = 1, correct: bool = True, return_keypoints: bool = False,
                 mirror: bool = False):
  """Finds every face in ``image``.

  Args:
    image: ``[H, W, 3]`` uint8 RGB (grey and RGBA uint8 arrays are converted,
      :func:`dff_jax.image_io.as_rgb`).
    min_score: keep detections with score >= this (:data:`MIN_SCORE`; MediaPipe's is 0.5).
    iou_threshold: weighted-NMS overlap (MediaPipe's 0.3).
    upsample: ``1``: the whole image at 128 px; ``2``: also 3 x 3 overlapping half-size tiles
      (small faces; see the module Note).
    correct: map the detector's boxes to landmark boxes (:data:`BOX_CORRECTION`), the box the
      alignment cascade expects; ``False`` gives BlazeFace's own boxes.
    return_keypoints: also return BlazeFace's 6 keypoints ``[N, 6, 2]`` (image pixels,
      :data:`KEYPOINTS` order).
    mirror: score each anchor by the mean of its scores on the image and on its left-right
      mirror (:func:`mirror_anchor_ids`; the boxes are the image's own; two network inputs);
      ``False`` (default): the image's scores alone.

  Returns:
    ``boxes [N, 4]`` float32 ``(x0, y0, x1, y1)`` in image pixels (pixel ``(i, j)`` centred at
    ``(j + 0.5, i + 0.5)``; a box may extend past the image border), ``scores [N]`` float32 in
    (0, 1], sorted by descending score. ``N = 0`` when no face is found.

  Raises:
    ValueError: ``image`` is not an ``[H, W, 3]`` uint8 array (or is empty / over 50 MP).
  """
  return default_detector()(image, min_score=min_score, iou_threshold=iou_threshold,
                            upsample=upsample, correct=correct, return_keypoints=return_keypoints,
                            mirror=mirror)
