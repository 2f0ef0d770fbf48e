"""A per-region linear albedo model built from mesh geometry alone (NumPy).

The ICT and Surrey models ship no reflectance, so we paint one: regions are found from the part
labels and the 68 landmarks (frontal x-y projection), each region gets a mean colour and colour
directions, and a few smooth random fields add low-frequency blotchiness. The result is a linear
model ``albedo = mean + sum_k c_k basis_k`` with ``c_k ~ N(0, 1)`` (clipped to [0, 1] by
:func:`dff_jax.face_model.model.albedo`).

Colours are linear RGB reflectance (sRGB values converted with the sRGB curve). Frame: model
space, mm, x to the subject's left, y up, z towards the viewer.

Regions (later ones painted over earlier ones with soft weights):
  skin (face, head and neck) -> scalp hair -> lips -> brows -> nostrils -> eyes -> mouth socket.
  * skin: mid tone sRGB (196, 146, 118); basis 0 spans pale (~sRGB 245, 214, 192 at +2 sigma) to
    dark brown (~sRGB 92, 58, 42 at -2 sigma); basis 1 redder <-> olive.
  * hair: vertices of the head above the hairline (brow height + 55 mm at the front, above the ear
    tops behind the ears); dark brown, basis 3 dark <-> blond (shared with the brows).
  * lips: inside the outer-lip landmark polygon (48..59), 1.2 mm soft edge, front surface only;
    darker and redder than the skin, follows the skin tone, basis 2 lip redness.
  * brows: within ~3.5 mm (tapering to ~2 mm at the tail) of the brow landmark polylines
    (17..21, 22..26) moved 2 mm down (iBUG brow points trace the upper edge), front surface.
  * nostrils: around the midpoints of landmarks 31/33 and 33/35, on downward-facing surface.
  * eyes: eyeball parts (or, for models without eyeballs, the eye landmark polygons): sclera
    off-white, iris disk (radius ~5.8 mm) brown at 0, dark brown at -2 sigma, hazel-grey at
    +2 sigma (blue-grey only at ~ +6 sigma: linear RGB cannot span brown..blue symmetrically
    without turning red on one side; basis 4) with a darker limbal ring,
    pupil black.
  * mouth socket: dark red (fixed).
  * bases 5..(5 + num_fields - 1): smooth random fields over the skin (sums of random cosines
    with 25-90 mm wavelengths): brightness (4 % of the skin colour per sigma) and, for the last
    one, redness.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from dff_jax.face_model import model as model_lib
from dff_jax.face_model.contour import vertex_normals

ALBEDO_NAMES = ("skin_tone", "skin_hue", "lip_colour", "hair_colour", "iris_colour")


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
  """sRGB in [0, 255] -> linear RGB in [0, 1] (the sRGB transfer curve), same shape."""
  c = np.asarray(srgb, np.float64) / 255.0
  return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
  t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
  return t * t * (3 - 2 * t)


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Distance ``[N, S]`` from 2D points ``[N, 2]`` to segments ``a, b [S, 2]``."""
  ab = b - a
  ap = points[:, None, :] - a[None]
  t = np.clip(np.sum(ap * ab, -1) / np.maximum(np.sum(ab * ab, -1), 1e-12), 0, 1)
  closest = a[None] + t[..., None] * ab[None]
  return np.linalg.norm(points[:, None, :] - closest, axis=-1)


def signed_polygon_distance(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
  """Signed distance ``[N]`` (negative inside) of 2D points ``[N, 2]`` to a closed polygon
  ``[P, 2]`` (even-odd rule)."""
  a, b = polygon, np.roll(polygon, -1, axis=0)
  distance = _segment_distance(points, a, b).min(axis=1)
  x, y = points[:, 0:1], points[:, 1:2]
  crosses = ((a[None, :, 1] > y) != (b[None, :, 1] > y))
  x_cross = a[None, :, 0] + (y - a[None, :, 1]) * (b[None, :, 0] - a[None, :, 0]) / np.where(
      b[None, :, 1] == a[None, :, 1], 1e-12, b[None, :, 1] - a[None, :, 1])
  inside = np.sum(crosses & (x < x_cross), axis=1) % 2 == 1
  return np.where(inside, -distance, distance)


def _smooth_field(points: np.ndarray, rng: np.random.Generator, num_waves: int = 12) -> np.ndarray:
  """Zero-mean, unit-RMS smooth random field ``[N]`` over 3D points (mm): random cosines."""
  wavelengths = rng.uniform(25.0, 90.0, num_waves)
  directions = rng.normal(size=(num_waves, 3))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  phases = rng.uniform(0, 2 * np.pi, num_waves)
  field = np.cos(points @ (directions.T * (2 * np.pi / wavelengths)) + phases).sum(axis=1)
  field -= field.mean()
  return field / max(np.sqrt(np.mean(field**2)), 1e-9)


def build_albedo_model(vertices: np.ndarray, triangles: np.ndarray, vertex_part: np.ndarray,
                       landmark_vertex_ids: np.ndarray, num_fields: int = 5,
                       seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
  """Builds the per-region albedo model (see the module docstring for the regions).

  Args:
    vertices: ``[V, 3]`` float mean mesh, model space (mm).
    triangles: ``[T, 3]`` int, counter-clockwise seen from outside.
    vertex_part: ``[V]`` int part labels (``model.PART_NAMES``).
    landmark_vertex_ids: ``[68]`` int iBUG landmark vertices (all valid).
    num_fields: number of smooth random-field bases.
    seed: seed of the random fields (the model is a pure function of its inputs and seed).

  Returns:
    ``(albedo_mean [V, 3], albedo_basis [5 + num_fields, V, 3])`` float32 linear RGB.
  """
  v = np.asarray(vertices, np.float64)
  part = np.asarray(vertex_part)
  lm = v[np.asarray(landmark_vertex_ids)]
  normals = vertex_normals(v, triangles).astype(np.float64)
  num_vertices = v.shape[0]
  rng = np.random.default_rng(seed)
  xy = v[:, :2]
  skin_parts = np.isin(part, (model_lib.PART_FACE, model_lib.PART_HEAD_NECK))
  num_basis = 5 + num_fields
  # Regions in painting order: (weight [V], mean colour [3] or [V, 3], {basis k: direction}).
  regions = []

  # Skin.
  pale, dark = srgb_to_linear([245, 214, 192]), srgb_to_linear([92, 58, 42])
  skin_mean = 0.5 * (pale + dark)
  skin_tone = (pale - dark) / 4.0                                  # +-2 sigma: pale .. dark
  skin_hue = np.array([0.012, -0.007, -0.002])                     # redder <-> olive
  # Slightly redder cheeks and nose, from landmark geometry.
  cheeks = np.exp(-np.sum((xy[:, None, :] - np.stack([
      0.5 * (lm[2, :2] + lm[31, :2]), 0.5 * (lm[14, :2] + lm[35, :2]), lm[30, :2]])[None])**2,
      axis=-1) / (2 * 14.0**2)).max(axis=1) * (v[:, 2] > lm[0, 2])
  redness = 1.0 + cheeks[:, None] * np.array([0.12, -0.04, -0.03])[None]  # relative to the tone
  skin_directions = {0: skin_tone[None] * redness, 1: skin_hue}
  regions.append((skin_parts.astype(np.float64), skin_mean[None] * redness, skin_directions))

  # Scalp hair.
  eye_y = 0.5 * (lm[36, 1] + lm[45, 1])
  brow_y = lm[17:27, 1].max()
  ear_z = 0.5 * (lm[0, 2] + lm[16, 2])
  front_hair = _smoothstep(brow_y + 50.0, brow_y + 58.0, v[:, 1])
  back_hair = _smoothstep(eye_y + 10.0, eye_y + 20.0, v[:, 1]) * _smoothstep(
      ear_z + 5.0, ear_z - 10.0, v[:, 2])
  back_hair += _smoothstep(eye_y - 20.0, eye_y - 5.0, v[:, 1]) * _smoothstep(
      ear_z - 45.0, ear_z - 65.0, v[:, 2])
  hair = np.clip(np.maximum(front_hair, back_hair), 0, 1) * skin_parts
  hair_mean = srgb_to_linear([58, 40, 30])
  hair_dir = (srgb_to_linear([150, 115, 75]) - srgb_to_linear([25, 18, 15])) / 4.0
  regions.append((hair, hair_mean, {3: hair_dir}))

  front = part == model_lib.PART_FACE
  # Lips.
  lip_distance = signed_polygon_distance(xy, lm[48:60, :2])
  lips = _smoothstep(1.2, -1.2, lip_distance) * front * (v[:, 2] > lm[[48, 54], 2].min() - 6.0)
  lip_mean = skin_mean * np.array([0.85, 0.42, 0.48])
  regions.append((lips, lip_mean, {0: skin_tone * np.array([0.8, 0.42, 0.48]),
                                   2: np.array([0.025, -0.006, -0.002])}))

  # Brows: distance to the brow polylines moved 2 mm down; thickness tapers towards the tail.
  brows = np.zeros(num_vertices)
  for ids, tail_first in ((range(17, 22), True), (range(22, 27), False)):
    points = lm[list(ids), :2] - np.array([0.0, 2.0])
    a, b = points[:-1], points[1:]
    distances = _segment_distance(xy, a, b)
    nearest = np.argmin(distances, axis=1)
    along = (nearest + 0.5) / len(a)
    along = along if tail_first else 1.0 - along  # 0 at the tail, 1 at the inner end
    half_width = 2.0 + 1.8 * along
    weight = _smoothstep(half_width + 0.8, half_width - 0.8, distances.min(axis=1))
    brows = np.maximum(brows, weight)
  brows *= front * (v[:, 2] > lm[[36, 45], 2].min() - 12.0)
  brow_mean = srgb_to_linear([62, 45, 34])
  regions.append((brows * 0.92, brow_mean, {3: hair_dir * 0.8}))

  # Nostrils: downward-facing surface around the nostril centres.
  nostrils = np.zeros(num_vertices)
  for side_ids in ((31, 33), (35, 33)):
    centre = 0.55 * lm[side_ids[0]] + 0.45 * lm[side_ids[1]] + np.array([0.0, 1.5, -1.0])
    distance = np.linalg.norm((v - centre) * np.array([1.0, 1.6, 1.0]), axis=1)
    nostrils = np.maximum(nostrils, _smoothstep(4.8, 2.5, distance))
  nostrils *= front * _smoothstep(0.1, -0.4, normals[:, 1])
  regions.append((nostrils, srgb_to_linear([40, 20, 18]), {0: skin_tone * 0.2}))

  # Eyes.
  sclera_mean = srgb_to_linear([222, 212, 205])
  iris_brown, iris_blue = srgb_to_linear([70, 45, 28]), srgb_to_linear([95, 125, 150])
  # Brown at 0 and below (a linear model cannot go below dark brown without turning red);
  # greyer / bluer above: blue-grey at about +6 sigma.
  iris_mean = 0.85 * iris_brown + 0.15 * iris_blue
  iris_dir = (iris_blue - iris_brown) / 7.0
  pupil_colour = srgb_to_linear([8, 8, 10])
  eyes_weight = np.zeros(num_vertices)
  eyes_colour = np.zeros((num_vertices, 3))
  iris_weight = np.zeros(num_vertices)
  eyeball_parts = (model_lib.PART_EYEBALL_LEFT, model_lib.PART_EYEBALL_RIGHT)
  if np.isin(part, eyeball_parts).any():
    for p in eyeball_parts:
      ids = np.flatnonzero(part == p)
      if ids.size == 0:
        continue
      centre = 0.5 * (v[ids].min(axis=0) + v[ids].max(axis=0))
      front_point = v[ids[np.argmax(v[ids, 2])]]
      radial = np.hypot(v[ids, 0] - front_point[0], v[ids, 1] - front_point[1])
      ahead = v[ids, 2] > centre[2]
      eyes_weight[ids] = 1.0
      iris_weight[ids] = _smoothstep(6.1, 5.5, radial) * ahead
      eyes_colour[ids] = _eye_colour(radial, ahead, sclera_mean, iris_mean, pupil_colour)
  else:  # No eyeballs: paint inside the eye landmark polygons.
    for ids in (range(36, 42), range(42, 48)):
      polygon = lm[list(ids), :2]
      centre = polygon.mean(axis=0)
      inside = _smoothstep(0.6, -0.6, signed_polygon_distance(xy, polygon)) * front
      scale = 5.8 / max(0.5 * (polygon[:, 1].max() - polygon[:, 1].min()) * 1.6, 1e-3)
      radial = np.linalg.norm(xy - centre, axis=1) * min(scale, 1.0)
      colour = _eye_colour(radial, np.ones(num_vertices, bool), sclera_mean, iris_mean,
                           pupil_colour)
      eyes_colour = np.where(inside[:, None] > eyes_weight[:, None], colour, eyes_colour)
      iris_weight = np.maximum(iris_weight, inside * _smoothstep(6.1, 5.5, radial))
      eyes_weight = np.maximum(eyes_weight, inside)
  regions.append((eyes_weight, eyes_colour, {}))
  # The iris colour direction lives on the iris only (added after compositing).

  # Mouth socket.
  socket = (part == model_lib.PART_MOUTH_SOCKET).astype(np.float64)
  regions.append((socket, srgb_to_linear([70, 18, 20]), {}))

  # Composite: effective weight of a region = its weight times (1 - weight) of all later ones.
  mean = np.zeros((num_vertices, 3))
  basis = np.zeros((num_basis, num_vertices, 3))
  later = np.ones(num_vertices)
  effective = []
  for weight, _, _ in reversed(regions):
    effective.append(weight * later)
    later = later * (1.0 - weight)
  effective = effective[::-1]
  skin_effective = effective[0]
  for (weight, colour, directions), eff in zip(regions, effective):
    colour = np.broadcast_to(colour, (num_vertices, 3))
    mean += eff[:, None] * colour
    for k, direction in directions.items():
      basis[k] += eff[:, None] * np.broadcast_to(direction, (num_vertices, 3))
  # Iris colour (only where the eye region is visible in the composite).
  basis[4] += (effective[5] * iris_weight)[:, None] * iris_dir[None]
  # Low-frequency variation on skin (and, weaker, on lips): mostly brightness (a multiple of the
  # skin colour), the last field redness.
  field_weight = skin_effective + 0.5 * effective[2]
  for k in range(num_fields):
    field = _smooth_field(v, rng)
    if k == num_fields - 1:
      direction = np.array([0.012, -0.0015, -0.001])
    else:
      direction = 0.04 * skin_mean * (1.0 + 0.08 * rng.normal(size=3))
    basis[5 + k] = (field_weight * field)[:, None] * direction[None]
  return mean.astype(np.float32), basis.astype(np.float32)


def _eye_colour(radial: np.ndarray, ahead: np.ndarray, sclera: np.ndarray, iris: np.ndarray,
                pupil: np.ndarray) -> np.ndarray:
  """Eye colour ``[N, 3]`` from the distance ``radial [N]`` (mm) to the eye's front axis."""
  iris_w = _smoothstep(6.1, 5.5, radial) * ahead
  ring = _smoothstep(4.6, 5.6, radial) * iris_w
  pupil_w = _smoothstep(2.4, 1.9, radial) * ahead
  colour = sclera[None] * (1 - iris_w[:, None]) + iris[None] * iris_w[:, None]
  colour = colour * (1 - 0.55 * ring[:, None])
  return colour * (1 - pupil_w[:, None]) + pupil[None] * pupil_w[:, None]
