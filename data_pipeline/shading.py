"""Albedo, lighting, cast shadows and per-pixel colour (NumPy only).

* :func:`region_masks` / :func:`face_albedo`: a per-face albedo. Models with an albedo basis
  use it (with a per-face skin-tone factor); models without one get a region albedo built from
  ``vertex_part`` and the landmark geometry: skin, lips, brows, hair, sclera / iris / pupil on
  the eyeballs, a dark mouth interior, with per-face random colours.
* :func:`vertex_normals`: area-weighted vertex normals.
* :func:`sample_lighting` / :func:`shade_vertices`: ambient (or 2nd-order spherical-harmonic)
  light + one directional light with Blinn-Phong highlight, cast shadows from a light-view depth
  map of the face itself (same rasteriser).
* :func:`shade_pixels`: barycentric interpolation of vertex radiance at the rasterised pixels.

Colours are linear RGB reflectance / radiance in [0, 1]; :func:`encode_gamma` encodes.
Camera frame: x right, y up, z towards the viewer (DESIGN.md); light directions point from the
surface towards the light.
"""

from __future__ import annotations

import functools
from typing import Dict

import numpy as np

from dff_jax.face_model import model as fm

from data_pipeline import rasterizer


# ----------------------------------------------------------------------------------------------
# Albedo
# ----------------------------------------------------------------------------------------------


def _points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
  """Even-odd test of ``points [N, 2]`` against a closed ``polygon [P, 2]``; ``[N]`` bool."""
  x, y = points[:, 0:1], points[:, 1:2]
  a = polygon
  b = np.roll(polygon, -1, axis=0)
  crosses = (a[None, :, 1] > y) != (b[None, :, 1] > y)
  t = (y - a[None, :, 1]) / np.where(b[:, 1] == a[:, 1], 1e-12, b[:, 1] - a[:, 1])[None]
  x_cross = a[None, :, 0] + t * (b[None, :, 0] - a[None, :, 0])
  return (np.sum(crosses & (x < x_cross), axis=1) % 2) == 1


def _distance_to_polyline(points: np.ndarray, line: np.ndarray) -> np.ndarray:
  """Distance of ``points [N, 2]`` to an open polyline ``line [P, 2]``; ``[N]``."""
  a, b = line[:-1], line[1:]
  ab = b - a
  t = np.clip(np.einsum("npd,pd->np", points[:, None] - a[None], ab)
              / np.maximum(np.sum(ab * ab, axis=1), 1e-12), 0.0, 1.0)
  closest = a[None] + t[..., None] * ab[None]
  return np.min(np.linalg.norm(points[:, None] - closest, axis=-1), axis=1)


@functools.lru_cache(maxsize=8)
def _region_masks_cached(model_id: int, model: fm.FaceModel) -> Dict[str, np.ndarray]:
  del model_id
  mean = np.asarray(model.mean_vertices, np.float64)
  part = np.asarray(model.vertex_part)
  lm = mean[np.asarray(model.landmark_vertex_ids)]
  eye_mm = np.linalg.norm(lm[36] - lm[45])
  unit = eye_mm / 90.0  # ~1 mm on an adult face
  xy = mean[:, :2]
  is_face = part == fm.PART_FACE
  front = mean[:, 2] > lm[30, 2] - 45 * unit  # in front of the cheeks' back
  lips = _points_in_polygon(xy, lm[48:60, :2]) & is_face & front
  brow_d = np.minimum(_distance_to_polyline(xy - [0, -2.5 * unit], lm[17:22, :2]),
                      _distance_to_polyline(xy - [0, -2.5 * unit], lm[22:27, :2]))
  brows = (brow_d < 3.2 * unit) & is_face & front
  masks = dict(lips=lips, brows=brows)
  sclera = np.zeros(mean.shape[0], bool)
  iris = np.zeros_like(sclera)
  pupil = np.zeros_like(sclera)
  for eye_part in (fm.PART_EYEBALL_LEFT, fm.PART_EYEBALL_RIGHT):
    ids = part == eye_part
    if not ids.any():
      continue
    centre = mean[ids].mean(axis=0)
    radius = np.max(np.linalg.norm(mean[ids] - centre, axis=1))
    d = np.linalg.norm(xy - centre[:2], axis=1) / radius
    frontal = mean[:, 2] > centre[2]
    iris |= ids & frontal & (d < 0.42)
    pupil |= ids & frontal & (d < 0.17)
    sclera |= ids
  masks.update(sclera=sclera & ~iris, iris=iris & ~pupil, pupil=pupil)
  masks["mouth"] = part == fm.PART_MOUTH_SOCKET
  head = part == fm.PART_HEAD_NECK
  brow_y = lm[17:27, 1].max()
  ear_z = lm[0, 2] - 10 * unit
  masks["hair"] = head & ((mean[:, 1] > brow_y + 22 * unit)
                          | ((mean[:, 2] < ear_z) & (mean[:, 1] > lm[8, 1] + 70 * unit)))
  return {k: v.astype(np.float32) for k, v in masks.items()}


def region_masks(model: fm.FaceModel) -> Dict[str, np.ndarray]:
  """Per-vertex region indicators ``[V]`` float32 (lips, brows, sclera, iris, pupil, mouth,
  hair), from ``vertex_part`` and the frontal landmark geometry of the mean face; cached."""
  return _region_masks_cached(id(model), model)


def _mix(a, b, t):
  return np.asarray(a) * (1 - t) + np.asarray(b) * t


def face_albedo(model: fm.FaceModel, albedo_coefficients: np.ndarray,
                appearance: np.ndarray) -> np.ndarray:
  """Per-vertex linear RGB albedo ``[V, 3]`` float32 in [0, 1] of one face.

  Args:
    model: the face model.
    albedo_coefficients: ``[Ka]`` coefficients of the model's albedo basis.
    appearance: ``[16]`` uniform random numbers (from :func:`params.sample_face_parameters`).
  """
  u = np.asarray(appearance, np.float64)
  skin = _mix([0.78, 0.55, 0.44], [0.22, 0.13, 0.09], u[0] ** 1.3)
  skin = skin * (1 + 0.12 * (u[1:4] - 0.5))
  if model.num_albedo > 0:
    base = fm.albedo(model, albedo_coefficients)
    mean_skin = np.asarray(model.albedo_mean).mean(axis=0) + 1e-6
    return np.clip(base * (skin / mean_skin), 0, 1).astype(np.float32)
  masks = region_masks(model)
  v = model.num_vertices
  colour = np.tile(skin, (v, 1))
  # Gentle low-frequency variation (blush, shading of the albedo) over the face.
  mean = np.asarray(model.mean_vertices)
  wave = np.sin(mean[:, 0] * (0.02 + 0.04 * u[4]) + 6.28 * u[5]) * np.cos(mean[:, 1] * 0.03)
  colour = colour * (1 + 0.06 * wave[:, None])
  lip = skin * _mix([1.0, 0.62, 0.62], [0.85, 0.45, 0.5], u[6])
  brow_c = _mix([0.04, 0.03, 0.02], [0.45, 0.32, 0.18], u[7] ** 2)
  hair_c = brow_c if u[8] > 0.15 else skin * 0.95
  iris_c = _mix([0.20, 0.10, 0.05], [0.15, 0.30, 0.45], u[9] ** 2)
  layers = (("lips", lip, 0.8), ("brows", brow_c, 0.75 if u[10] > 0.1 else 0.3),
            ("hair", hair_c, 1.0), ("sclera", [0.75, 0.72, 0.68], 1.0),
            ("iris", iris_c, 1.0), ("pupil", [0.02, 0.02, 0.02], 1.0),
            ("mouth", [0.18, 0.05, 0.05], 1.0))
  for name, c, strength in layers:
    w = masks[name][:, None] * strength
    colour = colour * (1 - w) + np.asarray(c)[None] * w
  return np.clip(colour, 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Lighting
# ----------------------------------------------------------------------------------------------


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
  """Area-weighted unit vertex normals ``[V, 3]`` (float64) for ``vertices [V, 3]`` (any frame)
  and counter-clockwise ``triangles [T, 3]``."""
  v = np.asarray(vertices, np.float64)
  p0, p1, p2 = v[triangles[:, 0]], v[triangles[:, 1]], v[triangles[:, 2]]
  face_n = np.cross(p1 - p0, p2 - p0)
  n = np.zeros_like(v)
  num = v.shape[0]
  for k in range(3):
    ids = triangles[:, k]
    for d in range(3):
      n[:, d] += np.bincount(ids, weights=face_n[:, d], minlength=num)
  return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def sample_lighting(rng: np.random.Generator, model_name: str = "directional") -> Dict[str, np.ndarray]:
  """Random light of one view (camera frame).

  Returns:
    dict: ``direction [3]`` unit vector towards the light, ``colour [3]``, ``ambient [3]``,
    ``sh [9]`` (second-order SH irradiance weights, zeros for ``"directional"``),
    ``specular`` and ``shininess`` scalars.
  """
  azimuth = rng.uniform(-np.pi, np.pi)
  elevation = rng.uniform(-0.3, 1.3)  # angle above the image plane, towards the viewer
  direction = np.array([np.sin(azimuth) * np.cos(elevation),
                        np.cos(azimuth) * np.cos(elevation) * 0.8, np.sin(elevation) + 0.4])
  direction /= np.linalg.norm(direction)
  tint = 1 + 0.15 * (rng.random(3) - 0.5)
  intensity = rng.uniform(0.5, 1.1)
  ambient = rng.uniform(0.18, 0.55) * (1 + 0.1 * (rng.random(3) - 0.5))
  sh = np.zeros(9)
  if model_name == "spherical_harmonics":
    sh = rng.normal(scale=[0.0, 0.25, 0.25, 0.25, 0.1, 0.1, 0.1, 0.1, 0.1])
  return dict(direction=direction, colour=intensity * tint, ambient=ambient, sh=sh,
              specular=rng.uniform(0.0, 1.0), shininess=rng.uniform(8.0, 40.0))


def _light_rotation(direction: np.ndarray) -> np.ndarray:
  """A proper rotation whose third row is ``direction`` (a camera looking along -direction)."""
  e3 = direction / np.linalg.norm(direction)
  helper = np.array([0.0, 1.0, 0.0]) if abs(e3[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
  e1 = np.cross(helper, e3)
  e1 /= np.linalg.norm(e1)
  e2 = np.cross(e3, e1)
  return np.stack([e1, e2, e3])


def shadow_factor(camera_vertices: np.ndarray, triangles: np.ndarray, direction: np.ndarray,
                  resolution: int = 64) -> np.ndarray:
  """Cast-shadow visibility ``[V]`` float64 in {0, 1} of each vertex from a directional light.

  A light-view depth map of the mesh (orthographic along ``direction``, same rasteriser) is
  compared with each vertex's light-space depth, with a slope-sized bias.

  Args:
    camera_vertices: ``[V, 3]`` vertices in the camera frame (mm).
    triangles: ``[T, 3]`` counter-clockwise triangles.
    direction: ``[3]`` unit vector towards the light (camera frame).
  """
  light = camera_vertices @ _light_rotation(direction).T
  lo = light[:, :2].min(axis=0)
  extent = max(float((light[:, :2].max(axis=0) - lo).max()), 1e-6)
  px_per_mm = (resolution - 1) / extent
  screen = np.stack([(light[:, 0] - lo[0]) * px_per_mm + 0.5,
                     (light[:, 1] - lo[1]) * -px_per_mm + (resolution - 0.5),
                     light[:, 2]], axis=1)
  raster = rasterizer.rasterize(screen, triangles, resolution, resolution)
  j = np.clip(screen[:, 0].astype(np.int64), 0, resolution - 1)
  i = np.clip(screen[:, 1].astype(np.int64), 0, resolution - 1)
  occluder = raster.depth[i, j]
  bias = 2.5 / px_per_mm + 0.5
  return (occluder <= light[:, 2] + bias).astype(np.float64)


def shade_vertices(albedo: np.ndarray, camera_normals: np.ndarray, lighting: Dict[str, np.ndarray],
                   shadow: np.ndarray | None = None,
                   specular_weight: np.ndarray | float = 1.0,
                   specular_strength: float = 0.15) -> np.ndarray:
  """Linear RGB radiance ``[V, 3]`` of each vertex.

  ``albedo * (ambient + SH(n) + colour * max(n.l, 0) * shadow) + specular * highlight``.

  Args:
    albedo: ``[V, 3]`` linear reflectance.
    camera_normals: ``[V, 3]`` unit normals in the camera frame.
    lighting: from :func:`sample_lighting`.
    shadow: optional ``[V]`` visibility of the light.
    specular_weight: ``[V]`` or scalar per-vertex glossiness (0 for hair, eyes, mouth).
    specular_strength: global highlight strength.
  """
  n = camera_normals
  l = lighting["direction"]
  ndotl = np.maximum(n @ l, 0.0)
  if shadow is not None:
    ndotl = ndotl * shadow
  sh = lighting["sh"]
  basis = np.stack([np.ones(n.shape[0]), n[:, 1], n[:, 2], n[:, 0], n[:, 0] * n[:, 1],
                    n[:, 1] * n[:, 2], 3 * n[:, 2] ** 2 - 1, n[:, 0] * n[:, 2],
                    n[:, 0] ** 2 - n[:, 1] ** 2], axis=1)
  irradiance = (lighting["ambient"][None] * (1 + basis @ sh)[:, None]
                + ndotl[:, None] * lighting["colour"][None])
  radiance = albedo * irradiance
  half = l + np.array([0.0, 0.0, 1.0])
  half /= np.linalg.norm(half)
  spec = np.maximum(n @ half, 0.0) ** lighting["shininess"] * (ndotl > 0)
  radiance += (specular_strength * lighting["specular"] * spec * specular_weight)[:, None] \
      * lighting["colour"][None]
  return radiance


def shade_pixels(raster: rasterizer.Raster, triangles: np.ndarray,
                 vertex_radiance: np.ndarray) -> np.ndarray:
  """Per-pixel radiance ``[H, W, 3]`` float32 (zeros on background) by barycentric
  interpolation of ``vertex_radiance [V, 3]`` over the rasterised triangles."""
  h, w = raster.height, raster.width
  tid = raster.triangle_ids.reshape(-1)
  pix = np.nonzero(tid >= 0)[0]
  out = np.zeros((h * w, 3), np.float32)
  corner_ids = triangles[tid[pix]]  # [M, 3]
  bary = raster.barycentrics.reshape(-1, 3)[pix]
  radiance = np.asarray(vertex_radiance, np.float32)
  out[pix] = (bary[:, 0:1] * radiance[corner_ids[:, 0]] + bary[:, 1:2] * radiance[corner_ids[:, 1]]
              + bary[:, 2:3] * radiance[corner_ids[:, 2]])
  return out.reshape(h, w, 3)


def encode_gamma(linear: np.ndarray) -> np.ndarray:
  """Linear RGB -> display RGB in [0, 1] (gamma 2, a cheap stand-in for sRGB), float32."""
  return np.sqrt(np.clip(linear, 0.0, 1.0)).astype(np.float32)
