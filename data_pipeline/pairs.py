"""Multi-view synthetic face samples with exact dense correspondence (NumPy only).

A sample is ``V`` views of one face (same identity, expression and albedo) under different pose,
lighting, background, occluder and photometric noise. :func:`generate_sample` is a pure function
of ``(config, index)``: its generator is ``np.random.default_rng((config.seed, index))``.
:class:`PairSource` exposes it as a random-access source (``len``, ``[i]``) usable directly by
``grain.MapDataset.source`` (it pickles without its cached model, so worker processes stay
light).

Correspondences are defined on the surface: a random point inside a random face pixel of view 0
(sub-pixel jitter) gives the front-most surface point there (triangle + barycentrics, exact, see
:func:`data_pipeline.rasterizer.front_surface_at`); weak perspective is affine, so its position in
view ``v`` is the same barycentric blend of view ``v``'s projected vertices, and it is visible in
view ``v`` when its triangle faces the camera, it lies inside the image and no surface lies more
than ``depth_tolerance_mm`` in front of it *at that exact point*.

Sample fields (DESIGN / contract "Data pipeline sample"; V views, K correspondences, image frame
(x, y) pixels with pixel (i, j) centred at (j + 0.5, i + 0.5)):

* ``images [V, H, W, 3] uint8``;
* ``vertex_ids [V, H, W] int32`` (model vertex id of the rendered triangle's corner nearest to
  the surface point at the pixel centre, i.e. the largest barycentric weight; -1 background),
  ``triangle_ids [V, H, W] int32`` (index into ``params.render_triangles(config)``, the possibly
  decimated triangle list over model vertex ids; -1 background), ``barycentrics [V, H, W, 3]
  float32`` (weights of that triangle's corners), ``mask [V, H, W] bool`` (face-model pixels);
* ``points_px [V, K, 2] float32``, ``points_visible [V, K] bool``, ``points_a_px``,
  ``points_b_px [K, 2]`` and ``valid [K] bool`` (views 0 and 1), plus the surface points
  themselves: ``points_triangle_ids [K] int32`` (into ``params.render_triangles(config)``, -1
  for padding) and ``points_barycentrics [K, 3] float32``. The K points are drawn uniformly over
  view 0's face pixels, those visible in view 1 first, so ``valid`` is mostly True;
* ``landmarks_px [V, 68, 2] float32``, ``landmarks_visible [V, 68] bool``;
* ``yaw_rad, pitch_rad, roll_rad, scale [V] float32`` (scale in pixels per mm),
  ``translation_px [V, 2] float32``;
* ``shape_coefficients [Ki]``, ``expression_coefficients [Ke]``, ``albedo_coefficients [Ka]``
  float32; ``index`` int64 scalar.

Pose convention: ``R = dff_jax.geometry.euler_to_matrix(pitch, yaw, roll)`` and image points
``dff_jax.geometry.weak_perspective_project(X, scale, R, translation_px)``.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional

import numpy as np

from data_pipeline import augment, backgrounds, params, rasterizer, shading
from data_pipeline.config import PipelineConfig

Sample = Dict[str, np.ndarray]

# Candidates drawn per requested correspondence (the visible-in-view-1 ones come first).
_CANDIDATE_FACTOR = 2


def checked_index(i: int, length: int, name: str) -> int:
  """``int(i)`` for a random-access source of ``length`` items, or ``IndexError`` naming the
  source when it is not in ``[0, length)`` (sources that take negative indices wrap them
  first)."""
  i = int(i)
  if not 0 <= i < length:
    raise IndexError(f"index {i} out of range for {name} of length {length}")
  return i


def shard_indices(num_examples: int, process_index: int, process_count: int) -> range:
  """The contiguous block of example indices that host ``process_index`` of ``process_count``
  serves (blocks differ in size by at most one and cover ``[0, num_examples)``)."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, "
                     f"{process_count}")
  start = num_examples * process_index // process_count
  end = num_examples * (process_index + 1) // process_count
  return range(start, end)


def _surface_positions(screen: np.ndarray, triangles: np.ndarray, triangle_ids: np.ndarray,
                       barycentrics: np.ndarray) -> np.ndarray:
  """``[N, 3]`` (x_px, y_px, z_mm) of surface points (triangle id, barycentrics) in one view."""
  corners = screen[triangles[triangle_ids]]  # [N, 3, 3]
  return np.einsum("nv,nvd->nd", barycentrics, corners)


def _visible(raster: rasterizer.Raster, positions: np.ndarray, front_depth: np.ndarray,
             tolerance_mm: float, triangle_ids: Optional[np.ndarray] = None) -> np.ndarray:
  """Visibility ``[N]`` bool of points from the exact front depth at their image positions.

  Args:
    raster: the view's raster.
    positions: ``[N, 3]`` (x_px, y_px, z_mm) of the points in the view.
    front_depth: ``[N]`` from :func:`rasterizer.front_surface_at` at ``positions[:, :2]``.
    tolerance_mm: allowed depth of a surface in front of the point.
    triangle_ids: optional ``[N]`` triangles the points lie on (must face the camera).
  """
  h, w = raster.height, raster.width
  x, y = positions[:, 0], positions[:, 1]
  visible = (x >= 0) & (x <= w) & (y >= 0) & (y <= h) & np.isfinite(front_depth)
  visible &= front_depth <= positions[:, 2] + tolerance_mm
  if triangle_ids is not None:
    visible &= (triangle_ids >= 0) & raster.front_facing[np.maximum(triangle_ids, 0)]
  return visible


def visible_in_view(raster: rasterizer.Raster, positions: np.ndarray,
                    triangle_ids: Optional[np.ndarray], tolerance_mm: float) -> np.ndarray:
  """Exact visibility ``[N]`` bool of surface points at ``positions [N, 3]`` (x_px, y_px, z_mm)
  of a view; with ``triangle_ids [N]`` (-1 = none) their triangles must also face the camera
  (``None``: points such as landmark vertices, checked by depth alone)."""
  front_depth, _, _ = rasterizer.front_surface_at(raster, positions[:, :2])
  return _visible(raster, positions, front_depth, tolerance_mm, triangle_ids)


def _render_view(rng: np.random.Generator, config: PipelineConfig, prepared: params.PreparedModel,
                 vertices: np.ndarray, normals: np.ndarray, albedo: np.ndarray,
                 specular_weight: np.ndarray, landmark_ids: np.ndarray):
  """Pose, raster and image of one view. Returns ``(view params, screen [V,3], raster, image)``."""
  size = config.image_size
  tris = prepared.triangles
  view = params.sample_view_parameters(rng, config, prepared, vertices, landmark_ids)
  screen = params.screen_points(vertices, view)
  raster = rasterizer.rasterize(screen, tris, size, size)
  light = shading.sample_lighting(rng, config.lighting)
  rotation = view["rotation"]
  camera_normals = normals @ rotation.T
  shadow = None
  if config.shadows:
    shadow = shading.shadow_factor(vertices @ rotation.T, tris, light["direction"],
                                   resolution=max(32, min(96, size // 2)))
  radiance = shading.shade_vertices(albedo, camera_normals, light, shadow, specular_weight,
                                    config.specular)
  face = shading.shade_pixels(raster, tris, radiance)
  face = shading.encode_gamma(face)
  background = backgrounds.random_background(rng, size, size, config.background)
  mask = raster.triangle_ids >= 0
  image = augment.soften_silhouette(np.where(mask[..., None], face, background), mask)
  if rng.random() < config.occluder_probability:
    lm = screen[landmark_ids, :2]
    extent = float(np.max(lm.max(axis=0) - lm.min(axis=0)))
    image = augment.add_occluder(rng, image, lm.mean(axis=0), extent)
  image = augment.photometric_augment(rng, image, config.colour_jitter, config.blur_probability,
                                      config.noise_std)
  image = (image * 255.0 + 0.5).astype(np.uint8)
  return view, screen, raster, image


def generate_sample(config: PipelineConfig, index: int,
                    prepared: Optional[params.PreparedModel] = None) -> Sample:
  """The sample ``index`` of the pipeline ``config`` (pure function of ``(config, index)``).

  Args:
    config: pipeline configuration.
    index: example index (any non-negative int; ``PairSource`` bounds it by ``num_examples``).
    prepared: the prepared face model (default: the cached one of ``config.face_model``).

  Returns:
    the sample dict described in the module docstring.
  """
  if prepared is None:
    prepared = params.prepared_for(config)
  rng = np.random.default_rng((config.seed, int(index)))
  model = prepared.model
  tris = prepared.triangles
  size = config.image_size
  num_views, k = config.num_views, config.num_correspondences

  face = params.sample_face_parameters(rng, prepared, config)
  vertices = prepared.vertices(face["shape_coefficients"], face["expression_coefficients"])
  vertices = vertices.astype(np.float64)
  full_vertices = prepared.full_vertices(vertices)
  used = prepared.used_vertices
  normals = shading.vertex_normals(vertices, tris)
  albedo = shading.face_albedo(model, face["albedo_coefficients"], face["appearance"])[used]
  if model.num_albedo == 0:
    masks = shading.region_masks(model)
    specular_weight = 1.0 - np.clip(masks["hair"] + masks["mouth"] + masks["brows"], 0, 1)[used]
  else:
    specular_weight = np.ones(used.size)
  frontal_ids = prepared.compact_of[np.asarray(model.landmark_vertex_ids, np.int64)]

  views, screens, rasters, images, landmarks = [], [], [], [], []
  for _ in range(num_views):
    view, screen, raster, image = _render_view(rng, config, prepared, vertices, normals, albedo,
                                               specular_weight, frontal_ids)
    views.append(view)
    screens.append(screen)
    rasters.append(raster)
    images.append(image)
    ids = params.landmark_vertex_ids_for_pose(model, view["rotation"], full_vertices)
    landmarks.append(params.screen_points(full_vertices[ids], view))

  # Correspondences: surface points under random sub-pixel positions of view 0's face pixels.
  face_pixels = np.nonzero(rasters[0].triangle_ids.reshape(-1) >= 0)[0]
  num_candidates = _CANDIDATE_FACTOR * k
  if face_pixels.size:
    chosen = face_pixels[rng.integers(0, face_pixels.size, size=num_candidates)]
  else:
    chosen = np.zeros(num_candidates, np.int64)
  offsets = rng.random((num_candidates, 2))
  query = np.stack([chosen % size, chosen // size], axis=1) + offsets
  if not face_pixels.size:
    query[:] = -1.0  # outside the image: no surface found
  # One exact front-surface query per view serves the correspondences and the landmarks.
  depth0, cand_tri, cand_bary = rasterizer.front_surface_at(
      rasters[0], np.concatenate([query, landmarks[0][:, :2]]))
  landmark_front = [depth0[num_candidates:]]
  found = cand_tri[:num_candidates] >= 0
  cand_tri, cand_bary = cand_tri[:num_candidates][found], cand_bary[:num_candidates][found]
  cand_pos = np.stack([_surface_positions(s, tris, cand_tri, cand_bary) for s in screens])
  cand_vis = np.ones((num_views, cand_tri.size), bool)  # view 0: found at that exact point
  for v in range(1, num_views):
    depth, _, _ = rasterizer.front_surface_at(
        rasters[v], np.concatenate([cand_pos[v, :, :2], landmarks[v][:, :2]]))
    landmark_front.append(depth[cand_tri.size:])
    cand_vis[v] = _visible(rasters[v], cand_pos[v], depth[:cand_tri.size],
                           config.depth_tolerance_mm, cand_tri)
  # A landmark is visible when the front-most surface at its exact image position is within
  # the (looser) landmark tolerance of the landmark vertex.
  landmarks_visible = [_visible(r, lm, d, config.landmark_depth_tolerance_mm)
                       for r, lm, d in zip(rasters, landmarks, landmark_front)]
  landmarks_px = [lm[:, :2] for lm in landmarks]

  order = np.argsort(~(cand_vis[0] & cand_vis[1]), kind="stable")[:k]
  got = order.size
  points_px = np.zeros((num_views, k, 2), np.float32)
  points_visible = np.zeros((num_views, k), bool)
  points_tri = np.full(k, -1, np.int32)
  points_bary = np.zeros((k, 3), np.float32)
  points_px[:, :got] = cand_pos[:, order, :2]
  points_visible[:, :got] = cand_vis[:, order]
  points_tri[:got] = cand_tri[order]
  points_bary[:got] = cand_bary[order]

  # Dense maps.
  tri_maps = np.stack([r.triangle_ids for r in rasters])
  bary_maps = np.stack([r.barycentrics for r in rasters])
  safe = np.maximum(tri_maps, 0)
  nearest = prepared.model_triangles[safe, np.argmax(bary_maps, axis=-1)]
  vertex_ids = np.where(tri_maps >= 0, nearest, -1).astype(np.int32)

  def per_view(name):
    return np.asarray([v[name] for v in views], np.float32)

  return dict(
      images=np.stack(images),
      vertex_ids=vertex_ids,
      triangle_ids=tri_maps.astype(np.int32),
      barycentrics=bary_maps.astype(np.float32),
      mask=tri_maps >= 0,
      points_px=points_px,
      points_visible=points_visible,
      points_a_px=points_px[0].copy(),
      points_b_px=points_px[1].copy(),
      valid=points_visible[0] & points_visible[1],
      points_triangle_ids=points_tri,
      points_barycentrics=points_bary,
      landmarks_px=np.stack(landmarks_px).astype(np.float32),
      landmarks_visible=np.stack(landmarks_visible),
      yaw_rad=per_view("yaw_rad"), pitch_rad=per_view("pitch_rad"),
      roll_rad=per_view("roll_rad"), scale=per_view("scale"),
      translation_px=per_view("translation_px"),
      shape_coefficients=face["shape_coefficients"].astype(np.float32),
      expression_coefficients=face["expression_coefficients"].astype(np.float32),
      albedo_coefficients=face["albedo_coefficients"].astype(np.float32),
      index=np.int64(index),
  )


class PairSource:
  """Random-access source of generated samples: ``source[i] == generate_sample(config, i)``.

  Implements grain's ``RandomAccessDataSource`` protocol (``__len__``, ``__getitem__``) and
  pickles without its cached face model (each worker process loads it once).

  Example::

    ds = grain.MapDataset.source(PairSource(config)).shuffle(seed=0).batch(8)
  """

  def __init__(self, config: PipelineConfig, indices: Optional[Iterable[int]] = None):
    """Args: config; optional ``indices`` this source serves (e.g. :func:`shard_indices` of a
    host), ``source[i]`` then generates example ``indices[i]``."""
    self.config = config
    self._indices = None if indices is None else np.asarray(list(indices), np.int64)
    self._prepared = None

  def __len__(self) -> int:
    return self.config.num_examples if self._indices is None else int(self._indices.size)

  def __getitem__(self, i) -> Sample:
    i = int(i)
    n = len(self)
    if not -n <= i < n:
      raise IndexError(f"index {i} out of range for PairSource of length {n}")
    i %= n
    index = i if self._indices is None else int(self._indices[i])
    if self._prepared is None:
      self._prepared = params.prepared_for(self.config)
    return generate_sample(self.config, index, self._prepared)

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_prepared"] = None
    return state

  def __repr__(self) -> str:
    return f"PairSource(num_examples={len(self)}, config={self.config})"
