"""NumPy construction of the jaw-contour candidates ("parallels") and of missing landmarks.

Run once per model when it is loaded (static index structures); the pose-dependent selection is
:func:`dff_jax.face_model.model.contour_vertex_ids` (NumPy or JAX).

Frame: model space, millimetres, x to the subject's left, y up, z towards the viewer.

Why the rows run *inwards* (towards the nose): at yaw ``theta`` the silhouette of the cheek that is
turned away from the camera lies where the surface normal is perpendicular to the view direction,
i.e. at azimuth ``90 deg - theta`` around the head's vertical axis. The frontal jaw vertices are on
the yaw-0 silhouette (the ICT ones have normals pointing sideways, azimuth ~90 deg at ear level),
so with growing yaw the far-side outline moves from the frontal vertex across the cheek towards the
nose: that is the path the landmark has to march along (3DDFA's "landmark marching" on parallels).
The side facing the camera keeps its frontal jaw vertices (column 0), which stay visible.
"""

from __future__ import annotations

import numpy as np

from dff_jax.face_model import model as model_lib

DEFAULT_NUM_CANDIDATES = 12
# Azimuth (degrees, around the vertical head axis, 0 = straight ahead) where each row ends.
INNERMOST_AZIMUTH_DEG = 4.0


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
  """Area-weighted unit vertex normals.

  Args:
    vertices: ``[V, 3]`` float, model space.
    triangles: ``[T, 3]`` int, counter-clockwise seen from outside.

  Returns:
    ``[V, 3]`` float32 unit normals (zero for unreferenced vertices).
  """
  v = np.asarray(vertices, np.float64)
  t = np.asarray(triangles)
  face_normals = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
  normals = np.zeros_like(v)
  for k in range(3):
    np.add.at(normals, t[:, k], face_normals)
  norm = np.linalg.norm(normals, axis=1, keepdims=True)
  return (normals / np.maximum(norm, 1e-12)).astype(np.float32)


def build_contour_candidates(vertices: np.ndarray, vertex_part: np.ndarray,
                             jaw_vertex_ids: np.ndarray,
                             num_candidates: int = DEFAULT_NUM_CANDIDATES) -> np.ndarray:
  """For each jaw landmark, a row of vertices along its horizontal "parallel" on the cheek.

  Row ``j`` starts with the frontal vertex ``jaw_vertex_ids[j]`` (column 0) at azimuth ``phi0``
  around a vertical axis through ``(0, *, z_c)`` (``z_c`` = mean z of the two ear-level jaw
  landmarks 0 and 16) and continues at ``num_candidates - 1`` evenly spaced azimuths from ``phi0``
  down to ``INNERMOST_AZIMUTH_DEG`` (towards the nose, see the module docstring). Each column is the
  outermost (largest distance from the axis) face/head vertex of the same side in a thin
  horizontal slab ``|y - y0| < h`` around the landmark height ``y0`` and within a small azimuth bin
  (``h`` grows from 2 mm until every bin is filled). The chin row (8) repeats its vertex.

  Args:
    vertices: ``[V, 3]`` float mean mesh, model space (mm).
    vertex_part: ``[V]`` int part labels (``model.PART_NAMES``); only face and head/neck vertices
      are candidates.
    jaw_vertex_ids: ``[17]`` int frontal jaw vertex ids (iBUG 0..16).
    num_candidates: M, the row length (static).

  Returns:
    ``[17, M]`` int32 vertex ids.
  """
  v = np.asarray(vertices, np.float64)
  jaw_vertex_ids = np.asarray(jaw_vertex_ids)
  allowed = np.isin(vertex_part, (model_lib.PART_FACE, model_lib.PART_HEAD_NECK))
  z_centre = 0.5 * (v[jaw_vertex_ids[0], 2] + v[jaw_vertex_ids[16], 2])
  rows = np.empty((17, num_candidates), np.int32)
  for j in range(17):
    frontal = int(jaw_vertex_ids[j])
    rows[j, 0] = frontal
    x0, y0, z0 = v[frontal]
    if j == 8 or abs(x0) < 1e-6:
      rows[j, :] = frontal
      continue
    side = np.sign(x0)
    phi0 = np.arctan2(side * x0, z0 - z_centre)
    phi_end = min(np.deg2rad(INNERMOST_AZIMUTH_DEG), phi0)
    targets = np.linspace(phi0, phi_end, num_candidates)[1:]
    bin_half = max(abs(phi0 - phi_end) / (num_candidates - 1) / 2, np.deg2rad(0.5))
    on_side = allowed & (side * v[:, 0] > 0)
    phi = np.arctan2(side * v[:, 0], v[:, 2] - z_centre)
    radius = np.hypot(v[:, 0], v[:, 2] - z_centre)
    for half_height in (2.0, 3.0, 4.5, 7.0, 10.0, 15.0):
      slab = on_side & (np.abs(v[:, 1] - y0) < half_height)
      picks = []
      for target in targets:
        in_bin = np.flatnonzero(slab & (np.abs(phi - target) <= bin_half))
        if in_bin.size == 0:
          break
        picks.append(in_bin[np.argmax(radius[in_bin])])
      if len(picks) == len(targets):
        rows[j, 1:] = picks
        break
    else:  # Sparse mesh: nearest slab vertex in azimuth.
      slab = on_side & (np.abs(v[:, 1] - y0) < 15.0)
      ids = np.flatnonzero(slab) if slab.any() else np.array([frontal])
      for k, target in enumerate(targets):
        rows[j, k + 1] = ids[np.argmin(np.abs(phi[ids] - target))]
  return rows


def frontal_jaw_from_contour_polylines(vertices: np.ndarray, triangles: np.ndarray,
                                       right_contour_ids: np.ndarray,
                                       left_contour_ids: np.ndarray, chin_vertex_id: int,
                                       start_height_mm: float) -> np.ndarray:
  """Frontal jaw landmark vertices (iBUG 0..16) for models without fixed jaw vertices (SFM).

  Each side's contour polyline (top to bottom) is cut at ``start_height_mm`` (the height of
  landmark 0/16; we use the outer eye corners' mean height + 2 mm, as on the ICT mesh where
  landmark 0 sits 2.5 mm above the outer eye corner), extended by a last segment to the chin
  vertex, and sampled at 9 evenly spaced arc lengths (landmarks 0..8 on the right side, 16..8 on
  the left). Each sample snaps to the front-facing vertex (vertex normal z > 0.05) nearest to it
  in the frontal x-y projection: the SFM polylines run under the jaw near the chin (15 mm behind
  the chin vertex), and a 2D annotator of a frontal photo marks the visible outline instead.

  Args:
    vertices: ``[V, 3]`` float mean mesh (mm).
    triangles: ``[T, 3]`` int, counter-clockwise seen from the front.
    right_contour_ids, left_contour_ids: ``[C]`` int polyline vertex ids, top to bottom.
    chin_vertex_id: the vertex of landmark 8.
    start_height_mm: model y where landmarks 0 and 16 go.

  Returns:
    ``[17]`` int32 vertex ids (index 8 == ``chin_vertex_id``).
  """
  v = np.asarray(vertices, np.float64)
  front_facing = np.flatnonzero(vertex_normals(v, triangles)[:, 2] > 0.05)

  def side(ids):
    polyline = np.concatenate([v[np.asarray(ids)], v[chin_vertex_id][None]], axis=0)
    # Cut above start_height: interpolate the first crossing of y = start_height.
    ys = polyline[:, 1]
    below = np.flatnonzero(ys <= start_height_mm)
    if below.size and below[0] > 0:
      k = below[0]
      a, b = polyline[k - 1], polyline[k]
      w = (a[1] - start_height_mm) / max(a[1] - b[1], 1e-9)
      polyline = np.concatenate([(a + w * (b - a))[None], polyline[k:]], axis=0)
    lengths = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(polyline, axis=0), axis=1))])
    samples = []
    for s in np.linspace(0, lengths[-1], 9)[:8]:
      k = min(np.searchsorted(lengths, s, side="right") - 1, len(polyline) - 2)
      w = (s - lengths[k]) / max(lengths[k + 1] - lengths[k], 1e-9)
      point = polyline[k] + w * (polyline[k + 1] - polyline[k])
      nearest = np.argmin(np.sum((v[front_facing, :2] - point[:2]) ** 2, axis=1))
      samples.append(int(front_facing[nearest]))
    return samples

  right = side(right_contour_ids)
  left = side(left_contour_ids)
  return np.asarray(right + [chin_vertex_id] + left[::-1], np.int32)


def jaw_line_at_landmark_heights(vertices: np.ndarray, snap_ids: np.ndarray,
                                 right_line_ids: np.ndarray, left_line_ids: np.ndarray,
                                 jaw_vertex_ids: np.ndarray) -> np.ndarray:
  """Jaw landmark vertices (iBUG 0..16) of the 3D convention: on a jaw line, at the heights of
  the frontal jaw landmarks.

  The frontal jaw vertices (``jaw_vertex_ids``) are where a 2D annotator marks the outline of a
  frontal face: on the cheeks' yaw-0 silhouette, which at ear level lies in front of the
  mandible. A 3D annotation (AFLW2000-3D: fixed vertices of a fitted 3DMM) keeps its jaw points on
  the jaw itself, which a turned face shows from the side. The model's own jaw line (ICT-FaceKit's
  "extended jawline", SFM's contour polylines: top to bottom, along the back of the jaw from the
  ear to the chin) gives that path; each jaw landmark takes the point of its side's line at its
  frontal vertex's height (model y; linear between the line's vertices, the first crossing from
  the top), snapped to the nearest of ``snap_ids``. A landmark whose height the line does not
  reach, and the chin (8), keep the frontal vertex.

  Args:
    vertices: ``[V, 3]`` float mean mesh (model space, mm; y up).
    snap_ids: ``[S]`` int vertices a landmark may take (e.g. the skin of face and head).
    right_line_ids, left_line_ids: ``[C]`` int jaw-line vertex ids of the subject's right (iBUG
      0-7) and left (9-16) side, in order along the line (top to bottom or bottom to top).
    jaw_vertex_ids: ``[17]`` int frontal jaw vertex ids.

  Returns:
    ``[17]`` int32 vertex ids.
  """
  v = np.asarray(vertices, np.float64)
  snap_ids = np.asarray(snap_ids)
  out = np.asarray(jaw_vertex_ids, np.int64).copy()
  for rows, line_ids in ((range(0, 8), right_line_ids), (range(9, 17), left_line_ids)):
    line = v[np.asarray(line_ids)]
    if line[0, 1] < line[-1, 1]:   # ordered bottom to top (ICT's left line): turn it round
      line = line[::-1]
    for j in rows:
      height = v[out[j], 1]
      crossing = np.flatnonzero((line[:-1, 1] >= height) & (line[1:, 1] <= height))
      if not crossing.size:
        continue
      k = crossing[0]
      span = line[k, 1] - line[k + 1, 1]
      w = (line[k, 1] - height) / span if span > 0 else 0.0
      point = line[k] + w * (line[k + 1] - line[k])
      out[j] = snap_ids[np.argmin(np.sum((v[snap_ids] - point) ** 2, axis=1))]
  return out.astype(np.int32)


def inner_mouth_corner(vertices: np.ndarray, outer_corner_id: int, mouth_centre: np.ndarray,
                       inset_mm: float = 4.0, exclude=()) -> int:
  """A vertex for an inner mouth corner (iBUG 60/64) when the model has none (SFM).

  The outer corner (48/54) moved ``inset_mm`` towards the mouth centre (mean of 62 and 66),
  snapped to the nearest vertex other than the outer corner itself and ``exclude``.

  Args:
    vertices: ``[V, 3]`` mesh (mm). outer_corner_id: vertex of 48 or 54.
    mouth_centre: ``[3]`` model point. inset_mm: distance moved inwards.

  Returns:
    the vertex id (int).
  """
  v = np.asarray(vertices, np.float64)
  corner = v[outer_corner_id]
  direction = np.asarray(mouth_centre, np.float64) - corner
  direction /= max(np.linalg.norm(direction), 1e-9)
  target = corner + inset_mm * direction
  distance = np.sum((v - target) ** 2, axis=1)
  distance[[outer_corner_id, *exclude]] = np.inf
  return int(np.argmin(distance))
