"""Training data made of the fitted, textured real faces of :mod:`data_pipeline.real_faces`
(NumPy only): new views and the two sources the trainers read.

* **Views**: a face re-rendered at a new pose (:func:`render_new_view`: yaw to +-90 degrees,
  pitch, roll; relit, composited over the non-face part of another photo, :func:`real_background`)
  or the photo itself placed in the frame (:func:`photo_view`), each with its 68 landmarks (the
  jaw on the visible outline) and pose.
* **Sources**: :class:`RealFaceSource` (single views with landmarks and pose for the alignment
  cascade: the photo itself, annotated, or a re-rendered large-pose view) and
  :class:`RealPairSource` (two views with dense labels and correspondences for the encoder: photo
  and re-render, two re-renders, or the photo and a random warp of it). Both are pure functions
  of ``(config, index)`` with the same keys as :class:`data_pipeline.faces.FaceSource` /
  :func:`data_pipeline.pairs.generate_sample`, and pickle without their caches (grain workers).

Frames as in :mod:`data_pipeline.real_faces`. The photos and everything rendered from them are
research-use data: nothing of them is written into the repository.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from data_pipeline import augment, backgrounds, faces, pairs, params, rasterizer
from data_pipeline.config import PipelineConfig
from data_pipeline.real_faces import (RealFaces, RealFacesConfig, annotation_surface,
                                      render_textured, sample_image)


# ----------------------------------------------------------------------------------------------
# Views
# ----------------------------------------------------------------------------------------------


def _landmarks_in_view(face, prepared: params.PreparedModel, view, screen: np.ndarray):
  """``[68, 3]`` (x_px, y_px, z_mm) landmarks of a re-rendered view: the jaw (0-16) follows the
  silhouette for this pose (as synthetic faces), the inner points (17-67) are the annotated
  photo points carried by the fitted surface (the model's own landmark vertices where the mesh
  does not cover an annotated point)."""
  model = prepared.model
  full = prepared.full_vertices(face["vertices"])
  ids = params.landmark_vertex_ids_for_pose(model, view["rotation"], full)
  landmarks = params.screen_points(full[ids], view)
  tri, bary = face["annotation_surface"]
  on = tri >= 0
  if on.any():
    corners = screen[prepared.triangles[tri[on]]]
    landmarks[17:][on] = np.einsum("nk,nkd->nd", bary[on], corners)
  return landmarks


def _shading_ratio(rng: np.random.Generator, normals_photo: np.ndarray, normals_view: np.ndarray,
                   strength: float) -> np.ndarray:
  """``[U]`` relighting factor: a random directional light in the new view over an assumed
  frontal light in the photo, ``strength`` in [0, 1] mixing it in (linear light)."""
  azimuth, elevation = rng.uniform(-np.pi, np.pi), rng.uniform(0.2, 1.3)
  direction = np.array([np.cos(elevation) * np.sin(azimuth), np.cos(elevation) * np.cos(azimuth),
                        np.sin(elevation)])
  ambient = 0.45
  new = ambient + (1 - ambient) * np.maximum(normals_view @ direction, 0.0)
  old = ambient + (1 - ambient) * np.maximum(normals_photo[:, 2], 0.0)
  mix = rng.uniform(0.0, strength)
  return np.clip((1 - mix) + mix * new / old, 0.4, 1.8)


def real_background(rng: np.random.Generator, bank: RealFaces, size: int,
                    avoid: int) -> np.ndarray:
  """``[size, size, 3]`` float32: a corner of another face's photo outside its landmark box
  (the non-face part of a real photo), resampled to the view size, randomly mirrored."""
  other = int(rng.integers(len(bank)))
  if other == avoid and len(bank) > 1:
    other = (other + 1) % len(bank)
  photo = bank.photo(other)
  h, w = photo.shape[:2]
  lm = bank.landmarks_px[other]
  x0, y0 = np.clip(lm.min(0), 1, [w - 1, h - 1])
  x1, y1 = np.clip(lm.max(0), 1, [w - 1, h - 1])
  # The widest strip beside the landmark box.
  strips = [(0, 0, x0, h), (x1, 0, w, h), (0, 0, w, y0), (0, y1, w, h)]
  areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in strips]
  bx0, by0, bx1, by1 = strips[int(np.argmax(areas))]
  if min(bx1 - bx0, by1 - by0) < 4:
    return backgrounds.random_background(rng, size, size)
  side = min(bx1 - bx0, by1 - by0)
  cx = rng.uniform(bx0 + side / 2, bx1 - side / 2)
  cy = rng.uniform(by0 + side / 2, by1 - side / 2)
  grid = (np.arange(size) + 0.5) / size - 0.5
  xs, ys = np.meshgrid(cx + grid * side, cy + grid * side)
  if rng.random() < 0.5:
    xs = xs[:, ::-1]
  return sample_image(photo, np.stack([xs, ys], axis=-1))


def _finish(rng: np.random.Generator, config: PipelineConfig, image: np.ndarray,
            mask: Optional[np.ndarray], landmarks_px: np.ndarray) -> np.ndarray:
  """Silhouette softening, occluder and photometric augmentation; ``uint8`` output."""
  if mask is not None:
    image = augment.soften_silhouette(image, mask)
  if rng.random() < config.occluder_probability:
    extent = float(np.max(landmarks_px.max(axis=0) - landmarks_px.min(axis=0)))
    image = augment.add_occluder(rng, image, landmarks_px.mean(axis=0), extent)
  image = augment.photometric_augment(rng, image, config.colour_jitter, config.blur_probability,
                                      config.noise_std)
  return (np.clip(image, 0, 1) * 255.0 + 0.5).astype(np.uint8)


def photo_placement(rng: np.random.Generator, config: PipelineConfig, face,
                    prepared: params.PreparedModel) -> Tuple[float, np.ndarray]:
  """``(a, b)``: the photo is shown in the ``S x S`` view as ``x_view = a * x_photo + b``, with
  the fitted face's outer-eye-corner distance ``face_size_range`` of the view side (the same
  face sizes as the synthetic views) and the landmark box centre jittered as theirs."""
  size = config.image_size
  lm = face["landmarks_px"]
  eye = float(np.linalg.norm(lm[36] - lm[45]))
  fitted_eye = face["photo_view"]["scale"] * prepared.eye_distance_mm
  eye = max(eye, 0.5 * fitted_eye)  # a turned face: its 3D eye distance, not the foreshortened
  a = rng.uniform(*config.face_size_range) * size / max(eye, 1e-3)
  centre = 0.5 * (lm.min(0) + lm.max(0))
  jitter = rng.uniform(-config.translation_jitter, config.translation_jitter, size=2) * size
  b = np.array([size / 2, size / 2]) + jitter - a * centre
  return float(a), b


def place_photo(photo: np.ndarray, a: float, b: np.ndarray, size: int) -> np.ndarray:
  """``[size, size, 3]`` float32: the photo under ``x_view = a * x_photo + b`` (bilinear,
  the photo mirrored at its borders where the view reaches beyond it)."""
  centres = np.arange(size) + 0.5
  xs, ys = np.meshgrid((centres - b[0]) / a, (centres - b[1]) / a)
  return sample_image(photo, np.stack([xs, ys], axis=-1), mode="mirror")


def placed_view(view: Dict[str, np.ndarray], a: float, b: np.ndarray) -> Dict[str, np.ndarray]:
  """The fitted pose seen through ``x_view = a * x_photo + b``."""
  out = dict(view)
  out["scale"] = view["scale"] * a
  out["translation_px"] = a * np.asarray(view["translation_px"]) + b
  return out


def render_new_view(rng: np.random.Generator, bank: RealFaces, j: int, config: RealFacesConfig):
  """Face ``j`` re-rendered at a random pose of ``config.pipeline``.

  Returns:
    ``(image [S, S, 3] uint8, view dict, screen [U, 3], raster, landmarks [68, 3])``.
  """
  pipeline = config.pipeline
  prepared = bank.prepared
  face = bank.face(j)
  size = pipeline.image_size
  frontal_ids = prepared.compact_of[np.asarray(prepared.model.landmark_vertex_ids, np.int64)]
  view = params.sample_view_parameters(rng, pipeline, prepared, face["vertices"], frontal_ids)
  screen = params.screen_points(face["vertices"], view)
  raster = rasterizer.rasterize(screen, prepared.triangles, size, size)
  ratio = _shading_ratio(rng, face["normals"] @ face["photo_view"]["rotation"].T,
                         face["normals"] @ view["rotation"].T, config.relight_strength)
  rendered = render_textured(face["photo"], face["texture"], raster, prepared.triangles, ratio)
  mask = raster.triangle_ids >= 0
  background = real_background(rng, bank, size, j)
  landmarks = _landmarks_in_view(face, prepared, view, screen)
  image = _finish(rng, pipeline, np.where(mask[..., None], rendered, background), mask,
                  landmarks[:, :2])
  return image, view, screen, raster, landmarks


def photo_view(rng: np.random.Generator, bank: RealFaces, j: int, config: RealFacesConfig):
  """Face ``j``'s photo placed in the ``S x S`` view (:func:`photo_placement`).

  Returns:
    ``(image [S, S, 3] uint8, view dict (fitted pose in the view), screen [U, 3], raster of the
    fitted mesh in the view, annotated landmarks [68, 2] in the view)``.
  """
  pipeline = config.pipeline
  prepared = bank.prepared
  face = bank.face(j)
  size = pipeline.image_size
  a, b = photo_placement(rng, pipeline, face, prepared)
  view = placed_view(face["photo_view"], a, b)
  screen = params.screen_points(face["vertices"], view)
  raster = rasterizer.rasterize(screen, prepared.triangles, size, size)
  landmarks = a * face["landmarks_px"] + b
  image = _finish(rng, pipeline, place_photo(face["photo"], a, b, size), None, landmarks)
  return image, view, screen, raster, landmarks


# ----------------------------------------------------------------------------------------------
# Single annotated views (alignment cascade)
# ----------------------------------------------------------------------------------------------


class RealFaceSource:
  """Random access over single annotated real-face views: ``source[i]`` is a dict with the keys
  of :class:`data_pipeline.faces.FaceSource` (``image``, ``box``, ``landmarks_px``,
  ``landmarks_visible``, ``pose``, ``shape_coefficients``, ``expression_coefficients``,
  ``index``, ``model_landmarks``: False, the inner points are the annotator's) plus ``kind``
  (0 = the photo, 1 = re-rendered).

  Example ``i`` shows face ``i % len(bank)`` (so the first ``len(bank)`` examples cover every face
  once); it is the photo with probability ``photo_fraction``, else a re-render at a random pose.
  The photo's landmarks are its annotation (all marked visible: the 300-W outline convention
  annotates every point); a re-render's are :func:`_landmarks_in_view` with visibility by the
  exact depth test of the synthetic pipeline. ``pose`` is the fitted pose in the view.
  """

  def __init__(self, config: RealFacesConfig, jitter: faces.BoxJitter = faces.BoxJitter(),
               num_examples: Optional[int] = None):
    self.config = config
    self.jitter = jitter
    self.bank = RealFaces(config)
    self._num_examples = len(self.bank) if num_examples is None else int(num_examples)

  def __len__(self) -> int:
    return self._num_examples

  def __getitem__(self, i) -> Dict[str, np.ndarray]:
    i = pairs.checked_index(i, len(self), "RealFaceSource")
    pipeline = self.config.pipeline
    rng = np.random.default_rng((pipeline.seed, i, 11))
    j = i % len(self.bank)
    face = self.bank.face(j)
    is_photo = rng.random() < self.config.photo_fraction
    if is_photo:
      image, view, _, _, landmarks = photo_view(rng, self.bank, j, self.config)
      visible = np.ones(68, bool)
    else:
      image, view, _, raster, landmarks3 = render_new_view(rng, self.bank, j, self.config)
      visible = pairs.visible_in_view(raster, landmarks3, None,
                                      pipeline.landmark_depth_tolerance_mm)
      landmarks = landmarks3[:, :2]
    box = faces.jitter_box(rng, faces.landmark_box(landmarks), self.jitter)
    pose = np.array([view["scale"], view["pitch_rad"], view["yaw_rad"], view["roll_rad"],
                     *view["translation_px"]], np.float32)
    return dict(image=image, box=box, landmarks_px=landmarks.astype(np.float32),
                landmarks_visible=visible, pose=pose,
                shape_coefficients=np.asarray(face["shape_coefficients"], np.float32),
                expression_coefficients=np.asarray(face["expression_coefficients"], np.float32),
                index=np.int64(i), model_landmarks=np.bool_(False),
                kind=np.int32(0 if is_photo else 1))


# ----------------------------------------------------------------------------------------------
# Pairs with dense labels and correspondences (encoder)
# ----------------------------------------------------------------------------------------------

PAIR_KINDS = ("photo_render", "render_render", "photo_warp")


def vertex_id_map(raster: rasterizer.Raster, model_triangles: np.ndarray) -> np.ndarray:
  """``[H, W]`` int32 model vertex id at each pixel (the rendered triangle's corner of largest
  barycentric weight), -1 on background; as ``vertex_ids`` of the synthetic pairs."""
  tri = raster.triangle_ids
  nearest = model_triangles[np.maximum(tri, 0), np.argmax(raster.barycentrics, axis=-1)]
  return np.where(tri >= 0, nearest, -1).astype(np.int32)


def surface_correspondences(rng: np.random.Generator, rasters, screens, triangles: np.ndarray,
                            num_points: int, tolerance_mm: float):
  """``K`` surface points under random sub-pixel positions of view 0's face pixels, and where
  they are in view 1 (weak perspective is affine per triangle: the same barycentric blend).

  Returns:
    ``(points [2, K, 2] float32, visible [2, K] bool, triangle_ids [K] int32 (-1 padding),
    barycentrics [K, 3] float32)``; view 0's points are visible by construction (padding rows
    are invisible in both).
  """
  size_h, size_w = rasters[0].height, rasters[0].width
  face_pixels = np.nonzero(rasters[0].triangle_ids.reshape(-1) >= 0)[0]
  points = np.zeros((2, num_points, 2), np.float32)
  visible = np.zeros((2, num_points), bool)
  triangle_ids = np.full(num_points, -1, np.int32)
  barycentrics = np.zeros((num_points, 3), np.float32)
  if not face_pixels.size:
    return points, visible, triangle_ids, barycentrics
  chosen = face_pixels[rng.integers(0, face_pixels.size, size=2 * num_points)]
  query = np.stack([chosen % size_w, chosen // size_w], axis=1) + rng.random((2 * num_points, 2))
  _, tri, bary = rasterizer.front_surface_at(rasters[0], query)
  found = tri >= 0
  tri, bary = tri[found], bary[found]
  positions = [np.einsum("nk,nkd->nd", bary, s[triangles[tri]]) for s in screens]
  seen = pairs.visible_in_view(rasters[1], positions[1], tri, tolerance_mm)
  order = np.argsort(~seen, kind="stable")[:num_points]
  got = order.size
  for v in range(2):
    points[v, :got] = positions[v][order, :2]
  visible[0, :got] = True
  visible[1, :got] = seen[order]
  triangle_ids[:got] = tri[order]
  barycentrics[:got] = bary[order]
  return points, visible, triangle_ids, barycentrics


def warp_pair(rng: np.random.Generator, image: np.ndarray, vertex_ids: np.ndarray,
              config: RealFacesConfig):
  """A random similarity warp ``T`` of a view (rotation, scale, shift about the centre).

  Returns:
    ``(warped image [S, S, 3] float32 (mirrored at the borders), warped vertex_ids [S, S]
    (nearest pixel; -1 outside), forward map T: points [N, 2] -> [N, 2])``.
  """
  size = image.shape[0]
  angle = np.deg2rad(rng.uniform(-config.warp_rotation_deg, config.warp_rotation_deg))
  scale = np.exp(rng.uniform(-config.warp_scale, config.warp_scale))
  shift = rng.uniform(-0.08, 0.08, size=2) * size
  c, s_ = np.cos(angle), np.sin(angle)
  matrix = scale * np.array([[c, -s_], [s_, c]])
  centre = np.array([size / 2, size / 2])

  def forward(points):
    return (np.asarray(points) - centre) @ matrix.T + centre + shift

  centres = np.arange(size) + 0.5
  grid = np.stack(np.meshgrid(centres, centres), axis=-1).reshape(-1, 2)
  back = (grid - centre - shift) @ np.linalg.inv(matrix).T + centre
  warped = sample_image(image, back, mode="mirror").reshape(size, size, 3)
  j = np.floor(back[:, 0]).astype(np.int64)
  i = np.floor(back[:, 1]).astype(np.int64)
  inside = (j >= 0) & (j < size) & (i >= 0) & (i < size)
  ids = np.full(size * size, -1, np.int32)
  ids[inside] = vertex_ids[i[inside], j[inside]]
  return warped, ids.reshape(size, size), forward


class RealPairSource:
  """Random access over two-view real-face samples: ``source[i]`` has the keys the encoder's
  training reads (``images [2, S, S, 3] uint8``, ``vertex_ids [2, S, S]``, ``mask``,
  ``points_a_px``, ``points_b_px [K, 2]``, ``valid [K]``), as
  :func:`data_pipeline.pairs.generate_sample`, plus ``kind`` (index into :data:`PAIR_KINDS`)
  and ``index``.

  Kinds (weights ``config.pair_kinds``): ``photo_render`` (the photo, labelled by its fitted mesh,
  and a re-render at a random pose: correspondences through the fitted surface),
  ``render_render`` (two re-renders) and ``photo_warp`` (the photo and a random similarity warp
  of it: exact correspondence by construction, labels carried along). Example ``i`` uses face
  ``i % len(bank)``.
  """

  def __init__(self, config: RealFacesConfig, num_examples: Optional[int] = None):
    self.config = config
    self.bank = RealFaces(config)
    self._num_examples = 1_000_000 if num_examples is None else int(num_examples)

  def __len__(self) -> int:
    return self._num_examples

  def __getitem__(self, i) -> Dict[str, np.ndarray]:
    i = pairs.checked_index(i, len(self), "RealPairSource")
    config, pipeline = self.config, self.config.pipeline
    rng = np.random.default_rng((pipeline.seed, i, 13))
    j = i % len(self.bank)
    prepared = self.bank.prepared
    weights = np.asarray(config.pair_kinds, np.float64)
    kind = int(rng.choice(3, p=weights / weights.sum()))
    k = pipeline.num_correspondences
    face = self.bank.face(j)
    if kind == 2:
      image0, view0, _, raster0, _ = photo_view(rng, self.bank, j, config)
      views_pose = (view0, view0)  # view 1 is an image warp: no pose of its own
      triangle_ids = np.full(k, -1, np.int32)
      barycentrics = np.zeros((k, 3), np.float32)
      ids0 = vertex_id_map(raster0, prepared.model_triangles)
      warped, ids1, forward = warp_pair(rng, image0.astype(np.float32) / 255.0, ids0, config)
      lm = self.bank.landmarks_px[j]
      image1 = _finish(rng, pipeline, warped, None, forward(lm))
      size = pipeline.image_size
      face_pixels = np.nonzero(ids0.reshape(-1) >= 0)[0]
      if not face_pixels.size:
        face_pixels = np.arange(size * size)
      chosen = face_pixels[rng.integers(0, face_pixels.size, size=k)]
      points_a = np.stack([chosen % size, chosen // size], axis=1) + rng.random((k, 2))
      points_b = forward(points_a)
      valid = np.all((points_b >= 0) & (points_b <= size), axis=1)
      images = np.stack([image0, image1])
      vertex_ids = np.stack([ids0, ids1])
      points = np.stack([points_a, points_b]).astype(np.float32)
    else:
      if kind == 0:
        first = photo_view(rng, self.bank, j, config)
      else:
        first = render_new_view(rng, self.bank, j, config)
      second = render_new_view(rng, self.bank, j, config)
      views = (first, second)
      views_pose = (first[1], second[1])
      points, seen, triangle_ids, barycentrics = surface_correspondences(
          rng, [v[3] for v in views], [v[2] for v in views], prepared.triangles, k,
          pipeline.depth_tolerance_mm)
      valid = seen[0] & seen[1]
      images = np.stack([v[0] for v in views])
      vertex_ids = np.stack([vertex_id_map(v[3], prepared.model_triangles) for v in views])
    def per_view(name):
      return np.asarray([v[name] for v in views_pose], np.float32)

    return dict(images=images, vertex_ids=vertex_ids, mask=vertex_ids >= 0,
                points_a_px=points[0], points_b_px=points[1], valid=valid,
                points_triangle_ids=triangle_ids, points_barycentrics=barycentrics,
                shape_coefficients=np.asarray(face["shape_coefficients"], np.float32),
                expression_coefficients=np.asarray(face["expression_coefficients"], np.float32),
                yaw_rad=per_view("yaw_rad"), pitch_rad=per_view("pitch_rad"),
                roll_rad=per_view("roll_rad"), scale=per_view("scale"),
                translation_px=per_view("translation_px"),
                kind=np.int32(kind), index=np.int64(i))
