"""Pictures of alignment results, in NumPy only: overlays and the CED plot (no plotting library).

Images are ``[H, W, 3]`` uint8 RGB. Points are ``(x, y)`` image pixels, x right, y down, pixel
``(i, j)`` centred at ``(j + 0.5, i + 0.5)`` (DESIGN.md section 3). The drawing primitives are
vectorised over many segments / discs, so an overlay of a 16k-vertex mesh costs milliseconds.

* :func:`render_overlay`: the fitted mesh's outline (silhouette and hole edges of the face part,
  thin cyan), the pose axes from the nose tip (model x red, y green, z blue), the 68 landmarks
  (visible: filled green discs; hidden: hollow red rings).
* :func:`render_faces_overlay`: every face of an image, each as :func:`render_overlay`, with the
  detector's score above its box.
* :func:`render_ced_plot`: cumulative error distribution curves with ticks, grid, tick labels
  (a 5 x 7 bitmap font) and a legend of coloured boxes with the method names.

This module does not import JAX.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from dff_jax import geometry
from dff_jax.face_model import model as face_model_lib

Colour = Tuple[int, int, int]

VISIBLE_COLOUR: Colour = (40, 230, 60)
HIDDEN_COLOUR: Colour = (240, 50, 50)
MESH_COLOUR: Colour = (90, 200, 255)
AXIS_COLOURS: Tuple[Colour, Colour, Colour] = ((235, 40, 40), (40, 200, 40), (50, 90, 255))
AXIS_LENGTH_MM = 60.0
NOSE_TIP_LANDMARK = 30
CURVE_COLOURS: Tuple[Colour, ...] = ((30, 100, 220), (220, 60, 40), (40, 160, 60),
                                     (150, 60, 190), (230, 150, 20), (20, 170, 170))

# ----------------------------------------------------------------------------------------------
# A 5 x 7 bitmap font (digits, upper-case letters and a little punctuation)
# ----------------------------------------------------------------------------------------------

_GLYPHS = {
    "0": ("01110", "10001", "10011", "10101", "11001", "10001", "01110"),
    "1": ("00100", "01100", "00100", "00100", "00100", "00100", "01110"),
    "2": ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    "3": ("11111", "00010", "00100", "00010", "00001", "10001", "01110"),
    "4": ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    "5": ("11111", "10000", "11110", "00001", "00001", "10001", "01110"),
    "6": ("00110", "01000", "10000", "11110", "10001", "10001", "01110"),
    "7": ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    "8": ("01110", "10001", "10001", "01110", "10001", "10001", "01110"),
    "9": ("01110", "10001", "10001", "01111", "00001", "00010", "01100"),
    "A": ("01110", "10001", "10001", "11111", "10001", "10001", "10001"),
    "B": ("11110", "10001", "10001", "11110", "10001", "10001", "11110"),
    "C": ("01110", "10001", "10000", "10000", "10000", "10001", "01110"),
    "D": ("11100", "10010", "10001", "10001", "10001", "10010", "11100"),
    "E": ("11111", "10000", "10000", "11110", "10000", "10000", "11111"),
    "F": ("11111", "10000", "10000", "11110", "10000", "10000", "10000"),
    "G": ("01110", "10001", "10000", "10111", "10001", "10001", "01111"),
    "H": ("10001", "10001", "10001", "11111", "10001", "10001", "10001"),
    "I": ("01110", "00100", "00100", "00100", "00100", "00100", "01110"),
    "J": ("00111", "00010", "00010", "00010", "00010", "10010", "01100"),
    "K": ("10001", "10010", "10100", "11000", "10100", "10010", "10001"),
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "M": ("10001", "11011", "10101", "10101", "10001", "10001", "10001"),
    "N": ("10001", "10001", "11001", "10101", "10011", "10001", "10001"),
    "O": ("01110", "10001", "10001", "10001", "10001", "10001", "01110"),
    "P": ("11110", "10001", "10001", "11110", "10000", "10000", "10000"),
    "Q": ("01110", "10001", "10001", "10001", "10101", "10010", "01101"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
    "S": ("01111", "10000", "10000", "01110", "00001", "00001", "11110"),
    "T": ("11111", "00100", "00100", "00100", "00100", "00100", "00100"),
    "U": ("10001", "10001", "10001", "10001", "10001", "10001", "01110"),
    "V": ("10001", "10001", "10001", "10001", "10001", "01010", "00100"),
    "W": ("10001", "10001", "10001", "10101", "10101", "10101", "01010"),
    "X": ("10001", "10001", "01010", "00100", "01010", "10001", "10001"),
    "Y": ("10001", "10001", "01010", "00100", "00100", "00100", "00100"),
    "Z": ("11111", "00001", "00010", "00100", "01000", "10000", "11111"),
    ".": ("00000", "00000", "00000", "00000", "00000", "01100", "01100"),
    "-": ("00000", "00000", "00000", "11111", "00000", "00000", "00000"),
    "_": ("00000", "00000", "00000", "00000", "00000", "00000", "11111"),
    "%": ("11000", "11001", "00010", "00100", "01000", "10011", "00011"),
    ":": ("00000", "01100", "01100", "00000", "01100", "01100", "00000"),
    "/": ("00000", "00001", "00010", "00100", "01000", "10000", "00000"),
    "@": ("01110", "10001", "10111", "10101", "10111", "10000", "01110"),
    "=": ("00000", "00000", "11111", "00000", "11111", "00000", "00000"),
    "(": ("00010", "00100", "01000", "01000", "01000", "00100", "00010"),
    ")": ("01000", "00100", "00010", "00010", "00010", "00100", "01000"),
    " ": ("00000",) * 7,
}
_BITMAPS = {c: np.array([[ch == "1" for ch in row] for row in rows], bool)
            for c, rows in _GLYPHS.items()}
GLYPH_WIDTH, GLYPH_HEIGHT = 5, 7


def text_size(text: str, scale: int = 1) -> Tuple[int, int]:
  """``(width, height)`` in pixels of :func:`draw_text` output (1 px spacing per glyph)."""
  return (len(text) * (GLYPH_WIDTH + 1) - 1) * scale if text else 0, GLYPH_HEIGHT * scale


def draw_text(image: np.ndarray, text: str, x: int, y: int, colour: Colour,
              scale: int = 1) -> None:
  """Writes ``text`` (upper-cased; characters without a glyph are left blank) with its top-left
  corner at pixel column ``x``, row ``y``, in place; clipped to the image."""
  h, w, _ = image.shape
  for n, character in enumerate(text.upper()):
    bitmap = _BITMAPS.get(character, _BITMAPS[" "])
    if scale > 1:
      bitmap = np.kron(bitmap, np.ones((scale, scale), bool))
    i0, j0 = y, x + n * (GLYPH_WIDTH + 1) * scale
    rows, cols = np.nonzero(bitmap)
    rows, cols = rows + i0, cols + j0
    keep = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    image[rows[keep], cols[keep]] = colour


# ----------------------------------------------------------------------------------------------
# Vectorised primitives
# ----------------------------------------------------------------------------------------------


def draw_segments(image: np.ndarray, starts_xy: np.ndarray, ends_xy: np.ndarray, colour: Colour,
                  thickness: int = 1) -> None:
  """Draws many straight segments at once, in place (dense sampling, clipped to the image).

  Args:
    image: ``[H, W, 3]`` uint8.
    starts_xy, ends_xy: ``[N, 2]`` segment end points (x, y) in image pixels; segments with a
      non-finite end are skipped.
    colour: RGB.
    thickness: line width in pixels (a square brush).
  """
  h, w, _ = image.shape
  starts = np.asarray(starts_xy, np.float64).reshape(-1, 2)
  ends = np.asarray(ends_xy, np.float64).reshape(-1, 2)
  finite = np.isfinite(starts).all(1) & np.isfinite(ends).all(1)
  starts, ends = starts[finite], ends[finite]
  if not len(starts):
    return
  # Clamp absurd coordinates so the sample count stays bounded.
  limit = 4.0 * max(h, w)
  starts, ends = np.clip(starts, -limit, limit), np.clip(ends, -limit, limit)
  lengths = np.abs(ends - starts).max(1)
  steps = np.ceil(lengths * 1.5).astype(np.int64) + 1
  segment = np.repeat(np.arange(len(starts)), steps)
  offsets = np.arange(steps.sum()) - np.repeat(np.cumsum(steps) - steps, steps)
  t = (offsets / np.maximum(np.repeat(steps, steps) - 1, 1))[:, None]
  points = starts[segment] + t * (ends[segment] - starts[segment])
  _paint(image, points, colour, thickness)


def _paint(image: np.ndarray, points_xy: np.ndarray, colour: Colour, thickness: int) -> None:
  h, w, _ = image.shape
  j = np.floor(points_xy[:, 0]).astype(np.int64)
  i = np.floor(points_xy[:, 1]).astype(np.int64)
  low = -(thickness // 2)
  for di in range(low, low + thickness):
    for dj in range(low, low + thickness):
      ii, jj = i + di, j + dj
      ok = (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)
      image[ii[ok], jj[ok]] = colour


def draw_discs(image: np.ndarray, centres_xy: np.ndarray, radius: float, colour: Colour,
               filled: bool = True, ring_width: float = 1.0) -> None:
  """Filled discs or hollow rings of ``radius`` pixels around ``centres_xy [N, 2]``, in place."""
  h, w, _ = image.shape
  centres = np.asarray(centres_xy, np.float64).reshape(-1, 2)
  centres = centres[np.isfinite(centres).all(1)]
  reach = int(np.ceil(radius)) + 1
  grid = np.arange(-reach, reach + 1)
  di, dj = np.meshgrid(grid, grid, indexing="ij")
  for x, y in centres:
    i0, j0 = int(np.floor(y)), int(np.floor(x))
    ii, jj = i0 + di, j0 + dj
    distance = np.hypot(jj + 0.5 - x, ii + 0.5 - y)
    mask = distance <= radius
    if not filled:
      mask &= distance > radius - ring_width
    mask &= (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)
    image[ii[mask], jj[mask]] = colour


# ----------------------------------------------------------------------------------------------
# Mesh outline
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MeshOutline:
  """Static edge structure of a face model's face part, for cheap outline drawing.

  Attributes:
    triangles: ``[T, 3]`` int vertex ids of the face triangles: all three vertices in
      ``PART_FACE`` and, on the mean shape, in front of the ears (camera z above the frontal jaw
      landmarks) and between the chin and the upper forehead (all triangles when that leaves
      nothing).
    edges: ``[E, 2]`` int vertex ids of the unique edges of those triangles.
    edge_triangles: ``[E, 2]`` int indices into ``triangles`` of the (up to) two triangles
      sharing each edge; ``-1`` for the missing second triangle of a boundary edge.
  """
  triangles: np.ndarray
  edges: np.ndarray
  edge_triangles: np.ndarray


def mesh_outline_structure(model: face_model_lib.FaceModel) -> MeshOutline:
  """Precomputes :class:`MeshOutline` (NumPy, once per model)."""
  triangles = np.asarray(model.triangles, np.int64)
  part = np.asarray(model.vertex_part)
  vertices = np.asarray(model.mean_vertices, np.float64)
  landmarks = vertices[np.asarray(model.landmark_vertex_ids)]
  # The face in front of the ears, from the chin to the upper forehead (mean shape, model mm).
  jaw_z, nose, chin_y = landmarks[:17, 2].min(), landmarks[NOSE_TIP_LANDMARK], landmarks[8, 1]
  brow_y = landmarks[17:27, 1].max()
  inside = ((vertices[:, 2] >= jaw_z - 0.1 * (nose[2] - jaw_z))
            & (vertices[:, 1] <= brow_y + 0.6 * (brow_y - nose[1]))
            & (vertices[:, 1] >= chin_y - 0.15 * (nose[1] - chin_y)))
  keep = np.all(inside[triangles] & (part[triangles] == face_model_lib.PART_FACE), axis=1)
  if keep.sum() > 10:
    triangles = triangles[keep]
  corners = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
  owner = np.tile(np.arange(len(triangles)), 3)
  corners = np.sort(corners, axis=1)
  edges, inverse = np.unique(corners, axis=0, return_inverse=True)
  inverse = inverse.reshape(-1)
  order = np.argsort(inverse, kind="stable")
  sorted_edges, sorted_owner = inverse[order], owner[order]
  first = np.searchsorted(sorted_edges, np.arange(len(edges)), side="left")
  count = np.bincount(inverse, minlength=len(edges))
  edge_triangles = np.full((len(edges), 2), -1, np.int64)
  edge_triangles[:, 0] = sorted_owner[first]
  two = count >= 2
  edge_triangles[two, 1] = sorted_owner[first[two] + 1]
  return MeshOutline(triangles=triangles, edges=edges, edge_triangles=edge_triangles)


def outline_segments(outline: MeshOutline, vertices_mm: np.ndarray,
                     rotation: np.ndarray) -> np.ndarray:
  """The outline edges of a posed mesh: silhouette edges (one adjacent triangle facing the
  camera, the other away) and boundary edges (eye and mouth openings, the face part's border) of
  camera-facing triangles. No occlusion test (hidden outline edges are drawn too).

  Args:
    outline: from :func:`mesh_outline_structure`.
    vertices_mm: ``[V, 3]`` model-space vertices (mm).
    rotation: ``[3, 3]`` model-to-camera rotation.

  Returns:
    ``[N, 2]`` int vertex-id pairs to draw.
  """
  camera = np.asarray(vertices_mm, np.float64) @ np.asarray(rotation, np.float64).T
  tri = camera[outline.triangles]
  normal_z = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])[:, 2]
  facing = normal_z > 0
  first = facing[outline.edge_triangles[:, 0]]
  has_second = outline.edge_triangles[:, 1] >= 0
  second = facing[np.maximum(outline.edge_triangles[:, 1], 0)]
  silhouette = has_second & (first != second)
  boundary = ~has_second & first
  return outline.edges[silhouette | boundary]


# ----------------------------------------------------------------------------------------------
# Overlay
# ----------------------------------------------------------------------------------------------


def render_overlay(image: np.ndarray, landmarks_px: np.ndarray, visibility: np.ndarray,
                   pose: Dict[str, Any], shape_coefficients: np.ndarray,
                   expression_coefficients: np.ndarray,
                   model: Optional[face_model_lib.FaceModel] = None,
                   outline: Optional[MeshOutline] = None,
                   box_xyxy: Optional[np.ndarray] = None) -> np.ndarray:
  """The alignment result drawn over a copy of the image.

  Args:
    image: ``[H, W, 3]`` uint8 RGB.
    landmarks_px: ``[68, 2]`` image points (x, y).
    visibility: ``[68]`` 0/1 (or bool); visible points are filled green discs, hidden ones
      hollow red rings.
    pose: ``pitch_rad``, ``yaw_rad``, ``roll_rad``, ``scale`` (image px per mm) and
      ``translation_px`` ``[2]`` (image position of the model origin), weak perspective as in
      :func:`dff_jax.geometry.weak_perspective_project` (a dict, or a
      :class:`dff_jax.alignment.results.Pose`).
    shape_coefficients: ``[Ki]``; expression_coefficients: ``[Ke]``.
    model: the face model (NumPy); without it no mesh outline and no axes are drawn.
    outline: its :func:`mesh_outline_structure` (computed here when absent).
    box_xyxy: optional ``[4]`` face box, drawn as a thin grey rectangle.

  Returns:
    ``[H, W, 3]`` uint8.
  """
  canvas = np.array(image, np.uint8, copy=True)
  if hasattr(pose, "as_dict"):  # a dff_jax.alignment.results.Pose
    pose = pose.as_dict()
  h, w, _ = canvas.shape
  thickness = max(1, int(round(max(h, w) / 400)))
  radius = max(1.5, 0.006 * max(h, w))
  if box_xyxy is not None:
    x0, y0, x1, y1 = np.asarray(box_xyxy, np.float64)
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    draw_segments(canvas, corners, np.roll(corners, -1, axis=0), (160, 160, 160), thickness)
  if model is not None:
    rotation = geometry.euler_to_matrix(np.float64(pose["pitch_rad"]), np.float64(pose["yaw_rad"]),
                                        np.float64(pose["roll_rad"]))
    scale = float(pose["scale"])
    translation = np.asarray(pose["translation_px"], np.float64)
    vertices = np.asarray(face_model_lib.vertices(
        model, np.asarray(shape_coefficients, np.float32),
        np.asarray(expression_coefficients, np.float32)), np.float64)
    projected = geometry.weak_perspective_project(vertices, scale, rotation, translation)
    outline = outline if outline is not None else mesh_outline_structure(model)
    pairs = outline_segments(outline, vertices, rotation)
    draw_segments(canvas, projected[pairs[:, 0]], projected[pairs[:, 1]], MESH_COLOUR, 1)
    nose = vertices[int(np.asarray(model.landmark_vertex_ids)[NOSE_TIP_LANDMARK])]
    tips = nose + AXIS_LENGTH_MM * np.eye(3)
    ends = geometry.weak_perspective_project(np.concatenate([nose[None], tips]), scale, rotation,
                                             translation)
    for k in range(3):
      draw_segments(canvas, ends[:1], ends[k + 1:k + 2], AXIS_COLOURS[k], thickness + 1)
  landmarks = np.asarray(landmarks_px, np.float64)
  visible = np.asarray(visibility).astype(bool)
  draw_discs(canvas, landmarks[~visible], radius + 1.0, HIDDEN_COLOUR, filled=False,
             ring_width=max(1.0, thickness))
  draw_discs(canvas, landmarks[visible], radius, VISIBLE_COLOUR, filled=True)
  return canvas


def render_faces_overlay(image: np.ndarray, faces: Sequence[Any],
                         model: Optional[face_model_lib.FaceModel] = None,
                         outline: Optional[MeshOutline] = None) -> np.ndarray:
  """Every face of an image drawn over a copy of it (:func:`render_overlay` per face), with
  the detector's score (when there is one) above each face box.

  Args:
    image: ``[H, W, 3]`` uint8 RGB.
    faces: :class:`dff_jax.alignment.results.Face` objects (``landmarks_px``, ``visibility``,
      ``pose``, coefficients, ``box``, ``score``); none gives a copy of the image.
    model, outline: as :func:`render_overlay`.

  Returns:
    ``[H, W, 3]`` uint8.
  """
  canvas = np.array(image, np.uint8, copy=True)
  if model is not None and outline is None and len(faces):
    outline = mesh_outline_structure(model)
  scale = max(1, int(round(max(canvas.shape[:2]) / 500)))
  for face in faces:
    canvas = render_overlay(canvas, face.landmarks_px, face.visibility, face.pose,
                            face.shape_coefficients, face.expression_coefficients, model, outline,
                            box_xyxy=face.box)
    if getattr(face, "score", None) is not None:
      x0, y0 = np.asarray(face.box, np.float64)[:2]
      _, height = text_size("0", scale)
      draw_text(canvas, f"{face.score:.2f}", int(round(x0)), int(round(y0)) - height - 2,
                (160, 160, 160), scale)
  return canvas


# ----------------------------------------------------------------------------------------------
# CED plot
# ----------------------------------------------------------------------------------------------


def _tick_label(value: float) -> str:
  text = f"{value:.2f}"
  return text.rstrip("0").rstrip(".") if "." in text else text


def render_ced_plot(curves: Sequence[Tuple[str, np.ndarray]], max_error: float = 0.1,
                    tick_step: float = 0.02, width: int = 560, height: int = 400,
                    markers: Sequence[float] = (0.08,), title: str = "") -> np.ndarray:
  """A cumulative error distribution plot as an RGB image.

  x: error threshold from 0 to ``max_error`` (NME as a fraction), ticks every ``tick_step``;
  y: fraction of faces with error <= threshold, 0 to 1, ticks every 0.2. Each curve is the exact
  step function of its errors (NaN / inf errors count as failures: never under the curve).
  Dashed grey verticals at ``markers`` (e.g. the AUC / failure threshold). The legend (top left)
  shows a coloured box and the name of each curve, in order.

  Args:
    curves: ``(name, errors [M])`` per method.
    max_error, tick_step: x range and tick spacing.
    width, height: image size in pixels.
    markers: x positions of dashed reference lines.
    title: optional text above the plot.

  Returns:
    ``[height, width, 3]`` uint8 image.
  """
  canvas = np.full((height, width, 3), 255, np.uint8)
  left, right, top, bottom = 52, 24, 28 if title else 16, 40
  x0, x1, y0, y1 = left, width - right, height - bottom, top  # plot area (y0 at the bottom)
  black, grey = (0, 0, 0), (215, 215, 215)

  def to_x(error):
    return x0 + (np.asarray(error, np.float64) / max_error) * (x1 - x0)

  def to_y(fraction):
    return y0 - np.asarray(fraction, np.float64) * (y0 - y1)

  x_ticks = np.arange(0.0, max_error + 1e-9, tick_step)
  y_ticks = np.linspace(0.0, 1.0, 6)
  # Grid, then axes and tick marks.
  draw_segments(canvas, np.stack([to_x(x_ticks), np.full_like(x_ticks, y0)], 1),
                np.stack([to_x(x_ticks), np.full_like(x_ticks, y1)], 1), grey)
  draw_segments(canvas, np.stack([np.full_like(y_ticks, x0), to_y(y_ticks)], 1),
                np.stack([np.full_like(y_ticks, x1), to_y(y_ticks)], 1), grey)
  for marker in markers:
    if 0 < marker < max_error:
      ys = np.arange(y1, y0, 8.0)
      xs = np.full_like(ys, to_x(marker))
      draw_segments(canvas, np.stack([xs, ys], 1), np.stack([xs, np.minimum(ys + 4, y0)], 1),
                    (140, 140, 140))
  draw_segments(canvas, np.array([[x0, y0], [x0, y0]]), np.array([[x1, y0], [x0, y1]]), black)
  draw_segments(canvas, np.stack([to_x(x_ticks), np.full_like(x_ticks, y0)], 1),
                np.stack([to_x(x_ticks), np.full_like(x_ticks, y0 + 5)], 1), black)
  draw_segments(canvas, np.stack([np.full_like(y_ticks, x0 - 5), to_y(y_ticks)], 1),
                np.stack([np.full_like(y_ticks, x0), to_y(y_ticks)], 1), black)
  for value in x_ticks:
    label = _tick_label(value)
    tw, _ = text_size(label)
    draw_text(canvas, label, int(to_x(value) - tw / 2), y0 + 9, black)
  for value in y_ticks:
    label = _tick_label(value)
    tw, th = text_size(label)
    draw_text(canvas, label, x0 - 9 - tw, int(to_y(value) - th / 2), black)
  axis_label = "NME"
  tw, _ = text_size(axis_label)
  draw_text(canvas, axis_label, int((x0 + x1) / 2 - tw / 2), y0 + 24, black)
  if title:
    draw_text(canvas, title, x0, 8, black)
  # Curves: exact step functions.
  for n, (name, errors) in enumerate(curves):
    colour = CURVE_COLOURS[n % len(CURVE_COLOURS)]
    errors = np.asarray(errors, np.float64).reshape(-1)
    errors = np.where(np.isfinite(errors), errors, np.inf)
    count = max(len(errors), 1)
    finite = np.sort(errors[errors <= max_error])
    xs, ys = [0.0], [0.0]
    for k, e in enumerate(finite):
      xs += [e, e]
      ys += [k / count, (k + 1) / count]
    xs.append(max_error)
    ys.append(len(finite) / count)
    points = np.stack([to_x(xs), to_y(ys)], 1)
    draw_segments(canvas, points[:-1], points[1:], colour, thickness=2)
  # Legend.
  for n, (name, _) in enumerate(curves):
    colour = CURVE_COLOURS[n % len(CURVE_COLOURS)]
    ly = y1 + 8 + n * 14
    canvas[ly:ly + 9, x0 + 8:x0 + 20] = colour
    draw_text(canvas, name, x0 + 26, ly + 1, black)
  return canvas
