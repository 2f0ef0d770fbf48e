"""Real faces as fitted, textured 3D faces, and their re-rendering at new poses (NumPy only).

The paper's own recipe (``../shared/paper.md``, "Training data"; 300W-LP's "face profiling"): a
3D morphable model fitted to an annotated photo carries the photo's pixels, so the face can be
re-rendered from new viewpoints with exact correspondence between the views and to the photo.

* The fits come from a cache written by ``python -m experiments.fit_real_faces``
  (:mod:`dff_jax.real_fits`; pose, identity and expression per face, a reprojection residual and a
  ``keep`` flag). :class:`RealFaces` serves the kept faces: photo, fitted mesh, lifted texture.
  The lift is a pure function of the fit and the photo; ``python -m experiments.lift_real_faces``
  stores it for every kept face (:func:`save_lifts`, ``RealFacesConfig.lifts``) so that the
  generators skip it (about 60 % of a pair's cost otherwise).
* **Texture lifting** (:func:`lift_texture`): every vertex of the (decimated) rendered mesh gets
  a position in the photo: its own projection where the fitted mesh shows it there (depth test on
  the photo's raster, surface facing the camera), else the projection of its left-right mirror
  vertex (symmetry), else none; and a colour: the photo sampled there, or, for vertices neither
  side shows, the albedo model's mean (``albedo_mean``) tinted by the face's own skin colour and
  diffused from the known neighbours over the mesh.
* **Rendering** (:func:`render_textured`): a new pose is rasterised; inside each triangle whose
  three vertices take their photo position from the same side, the pixel's photo position is the
  barycentric blend of the corners' (weak perspective is affine per triangle, so this is the exact
  surface point), and the photo is sampled there at full resolution; other triangles blend the
  vertex colours. A random directional relighting ratio and the pipeline's photometric
  augmentation follow; the background is the non-face part of another photo.
* **Sources**: :class:`RealFaceSource` (single views with landmarks and pose for the alignment
  cascade: the photo itself, annotated, or a re-rendered large-pose view) and
  :class:`RealPairSource` (two views with dense labels and correspondences for the encoder: photo
  and re-render, two re-renders, or the photo and a random warp of it). Both are pure functions
  of ``(config, index)`` with the same keys as :class:`data_pipeline.faces.FaceSource` /
  :func:`data_pipeline.pairs.generate_sample`, and pickle without their caches (grain workers).

Frames: image points ``(x, y)`` in pixels, pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``;
model space mm; pose as in :mod:`dff_jax.geometry`. Images are display RGB (uint8 on output).

Note: the photos, and every texture and render derived from them, are research-use data
(``../shared/datasets/faces68/README.md``): nothing of them is written into the repository.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy import sparse
from scipy import spatial

from dff_jax import file_io, geometry

from data_pipeline import augment, backgrounds, faces, pairs, params, rasterizer, shading
from data_pipeline.config import PipelineConfig

SOURCE_OWN, SOURCE_MIRROR, SOURCE_NONE = 0, 1, 2
# A vertex takes its colour from a side of the photo whose surface normal has at least this
# camera-facing component (grazing surfaces stretch a few pixels over the whole triangle).
MIN_FACING = 0.3
# iBUG-68 left-right permutation (index i of a mirrored face is landmark MIRROR_68[i]).
MIRROR_68 = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65])


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RealFacesConfig:
  """Where the real faces come from and how their views are drawn.

  Attributes:
    fits: the fit cache (``experiments.fit_real_faces``); image paths inside it are used as
      stored, or looked up under ``image_dir`` by file name when given.
    image_dir: optional folder holding the photos (overrides the stored paths' folders).
    pipeline: the render settings (image size, face size range, pose ranges, photometric
      augmentation, occluders, ``render_max_triangles``, the face model the fits used); its
      ``seed`` seeds every example.
    photo_fraction: single views (:class:`RealFaceSource`): fraction that are the photo itself.
    pair_kinds: :class:`RealPairSource`: relative frequency of ``(photo + re-render,
      re-render + re-render, photo + warp)``.
    relight_strength: strength of the random directional relighting of re-rendered views.
    warp_rotation_deg, warp_scale: the photo + warp pairs' similarity warp ranges.
    lifts: optional lift cache of these fits (:func:`save_lifts`): textures and annotation
      surfaces are read from it instead of being lifted per face (same views, up to the float16
      rounding of the stored colours).
  """

  fits: str
  image_dir: str = ""
  lifts: str = ""
  pipeline: PipelineConfig = PipelineConfig(image_size=128)
  photo_fraction: float = 0.5
  pair_kinds: Tuple[float, float, float] = (0.5, 0.25, 0.25)
  relight_strength: float = 0.6
  warp_rotation_deg: float = 25.0
  warp_scale: float = 0.25

  def __post_init__(self):
    if not 0.0 <= self.photo_fraction <= 1.0:
      raise ValueError(f"photo_fraction must be in [0, 1], got {self.photo_fraction}")
    kinds = np.asarray(self.pair_kinds, np.float64)
    if kinds.shape != (3,) or np.any(kinds < 0) or kinds.sum() <= 0:
      raise ValueError(f"pair_kinds must be 3 non-negative weights, got {self.pair_kinds}")


# ----------------------------------------------------------------------------------------------
# The fitted faces
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Texture:
  """A lifted texture over the rendered mesh's ``U`` vertices.

  Attributes:
    photo_px: ``[U, 2]`` float64 position in the photo each vertex takes its colour from (own or
      mirror vertex's projection; undefined where ``source == SOURCE_NONE``).
    source: ``[U]`` int8 ``SOURCE_OWN``, ``SOURCE_MIRROR`` or ``SOURCE_NONE``.
    colour: ``[U, 3]`` float32 display RGB in [0, 1] of every vertex (filled where none).
  """
  photo_px: np.ndarray
  source: np.ndarray
  colour: np.ndarray


def mirror_vertex_ids(vertices: np.ndarray) -> np.ndarray:
  """``[U]`` int64: for each of ``vertices [U, 3]`` (a mean face, model space), the vertex nearest
  its reflection ``(-x, y, z)`` (the model is close to left-right symmetric)."""
  reflected = np.asarray(vertices, np.float64) * np.array([-1.0, 1.0, 1.0])
  return spatial.cKDTree(np.asarray(vertices, np.float64)).query(reflected)[1].astype(np.int64)


def mesh_adjacency(triangles: np.ndarray, num_vertices: int) -> sparse.csr_matrix:
  """``[U, U]`` symmetric 0/1 vertex adjacency of ``triangles [T, 3]``."""
  rows = np.concatenate([triangles[:, a] for a, b in ((0, 1), (1, 2), (2, 0), (1, 0), (2, 1),
                                                        (0, 2))])
  cols = np.concatenate([triangles[:, b] for a, b in ((0, 1), (1, 2), (2, 0), (1, 0), (2, 1),
                                                        (0, 2))])
  matrix = sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(num_vertices,) * 2)
  matrix.data[:] = 1.0
  return matrix


def sample_image(image: np.ndarray, points_px: np.ndarray, mode: str = "nearest") -> np.ndarray:
  """Bilinear samples of ``image [H, W, C]`` float at ``points_px [..., 2]`` (x, y) pixels
  (pixel-centre convention). Outside the image: ``mode`` of ``scipy.ndimage.map_coordinates``
  (``"nearest"`` repeats the border, ``"mirror"`` reflects). Returns ``[..., C]`` float32."""
  points = np.asarray(points_px, np.float64)
  shape = points.shape[:-1]
  coords = [points[..., 1].reshape(-1) - 0.5, points[..., 0].reshape(-1) - 0.5]
  out = [ndimage.map_coordinates(image[..., c], coords, order=1, mode=mode)
         for c in range(image.shape[-1])]
  return np.stack(out, axis=-1).reshape(shape + (image.shape[-1],)).astype(np.float32)


def lift_texture(photo: np.ndarray, screen: np.ndarray, raster: rasterizer.Raster,
                 camera_normals: np.ndarray, mirror: np.ndarray, adjacency: sparse.csr_matrix,
                 albedo_mean: np.ndarray, diffusion_rounds: int = 30,
                 depth_tolerance_mm: float = 1.0) -> Texture:
  """Lifts the photo's colours onto the fitted mesh (module docstring).

  Args:
    photo: ``[H, W, 3]`` float32 display RGB in [0, 1].
    screen: ``[U, 3]`` (x_px, y_px, z_mm) of the mesh's vertices under the fitted pose, photo
      frame (:func:`data_pipeline.params.screen_points`).
    raster: the mesh rasterised in the photo frame.
    camera_normals: ``[U, 3]`` unit vertex normals in the photo's camera frame (z to viewer).
    mirror: ``[U]`` left-right mirror vertex of each vertex (:func:`mirror_vertex_ids`).
    adjacency: ``[U, U]`` vertex adjacency (:func:`mesh_adjacency`).
    albedo_mean: ``[U, 3]`` the model's mean albedo (linear RGB) at the vertices.
    diffusion_rounds: neighbour-averaging rounds filling the vertices neither side shows.
    depth_tolerance_mm: a vertex is seen when no surface lies more than this in front of it.
  """
  depth, _, _ = rasterizer.front_surface_at(raster, screen[:, :2])
  seen = np.isfinite(depth) & (depth <= screen[:, 2] + depth_tolerance_mm)
  seen &= camera_normals[:, 2] >= MIN_FACING
  source = np.full(screen.shape[0], SOURCE_NONE, np.int8)
  source[seen] = SOURCE_OWN
  source[~seen & seen[mirror]] = SOURCE_MIRROR
  photo_px = texture_positions(screen, source, mirror)
  known = source != SOURCE_NONE
  colour = np.zeros((screen.shape[0], 3), np.float32)
  colour[known] = sample_image(photo, photo_px[known])
  if (~known).any() and known.any():
    # The albedo model's pattern, scaled to this face's colours, diffused in from the seen part.
    albedo = np.sqrt(np.clip(albedo_mean, 1e-4, 1.0))  # display space, as the photo
    tint = np.median(colour[known], axis=0) / np.maximum(np.median(albedo[known], axis=0), 1e-3)
    base = albedo * tint
    ratio = np.ones((screen.shape[0], 3))
    ratio[known] = colour[known] / np.maximum(base[known], 1e-3)
    degree = np.maximum(np.asarray(adjacency.sum(axis=1)).ravel(), 1.0)[:, None]
    for _ in range(diffusion_rounds):
      spread = adjacency @ ratio / degree
      ratio[~known] = spread[~known]
    colour[~known] = np.clip(base[~known] * ratio[~known], 0.0, 1.0)
  elif not known.any():
    colour[:] = np.sqrt(np.clip(albedo_mean, 0.0, 1.0))
  return Texture(photo_px=photo_px, source=source, colour=colour)


def render_textured(photo: np.ndarray, texture: Texture, raster: rasterizer.Raster,
                    triangles: np.ndarray, shading_ratio: Optional[np.ndarray] = None
                    ) -> np.ndarray:
  """The textured mesh in one view: ``[H, W, 3]`` float32 display RGB, zeros on background.

  Args:
    photo: ``[Hp, Wp, 3]`` float32 the photo the texture was lifted from.
    texture: from :func:`lift_texture`.
    raster: the mesh rasterised in the new view (``triangles`` indices).
    triangles: ``[T, 3]`` the rendered mesh's triangles (compact vertex ids).
    shading_ratio: optional ``[U]`` multiplicative relighting factor per vertex (linear light).
  """
  h, w = raster.height, raster.width
  tid = raster.triangle_ids.reshape(-1)
  pix = np.nonzero(tid >= 0)[0]
  out = np.zeros((h * w, 3), np.float32)
  corners = triangles[tid[pix]]  # [M, 3]
  bary = raster.barycentrics.reshape(-1, 3)[pix].astype(np.float64)
  src = texture.source[corners]
  same = (src[:, 0] == src[:, 1]) & (src[:, 1] == src[:, 2]) & (src[:, 0] != SOURCE_NONE)
  colour = np.einsum("mk,mkc->mc", bary, texture.colour[corners])
  if same.any():
    where = np.einsum("mk,mkd->md", bary[same], texture.photo_px[corners[same]])
    colour[same] = sample_image(photo, where)
  if shading_ratio is not None:
    ratio = np.einsum("mk,mk->m", bary, shading_ratio[corners])[:, None]
    colour = np.sqrt(np.clip(colour ** 2 * ratio, 0.0, 1.0))
  out[pix] = colour
  return out.reshape(h, w, 3)


class RealFaces:
  """The kept faces of a fit cache, with their photos, meshes and lifted textures.

  ``len(bank)`` kept faces; :meth:`face` returns one face's data (the last one is cached, since
  consecutive examples usually share a face). Pickles without its caches.
  """

  def __init__(self, config: RealFacesConfig):
    self.config = config
    path = Path(config.fits)
    if not path.is_file():
      raise FileNotFoundError(f"real-face fit cache {path} not found: make it with "
                              "python -m experiments.fit_real_faces --out=" + str(path))
    with np.load(path) as data:
      keep = data["keep"]
      self.meta = json.loads(str(data["meta"]))
      self.names = data["names"][keep]
      self.image_paths = data["image_paths"][keep]
      self.landmarks_px = data["landmarks_px"][keep].astype(np.float64)
      self.pose = data["pose"][keep].astype(np.float64)
      self.shape_coefficients = data["shape_coefficients"][keep]
      self.expression_coefficients = data["expression_coefficients"][keep]
      self.residual = data["residual"][keep]
    if self.meta.get("face_model", "default") != config.pipeline.face_model:
      raise ValueError(f"the fits in {path} are of face model {self.meta.get('face_model')!r} but "
                       f"the pipeline renders {config.pipeline.face_model!r}")
    self._cache = None
    self._lift_cache = None
    self._last = (-1, None)

  def __len__(self) -> int:
    return len(self.names)

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_cache"] = None
    state["_lift_cache"] = None
    state["_last"] = (-1, None)
    return state

  @property
  def prepared(self) -> params.PreparedModel:
    """The rendered mesh with every identity mode (the fits use them all, whatever the
    pipeline's ``max_identity_modes`` for synthetic faces)."""
    return params.prepared_for(self.config.pipeline.replace(max_identity_modes=0))

  def _static(self):
    if self._cache is None:
      prepared = self.prepared
      mean = prepared.mean.reshape(-1, 3)
      albedo = np.asarray(prepared.model.albedo_mean, np.float64)[prepared.used_vertices]
      self._cache = dict(mirror=mirror_vertex_ids(mean),
                         adjacency=mesh_adjacency(prepared.triangles, mean.shape[0]),
                         albedo=albedo)
    return self._cache

  def image_path(self, j: int) -> Path:
    path = Path(str(self.image_paths[j]))
    if self.config.image_dir:
      path = Path(self.config.image_dir) / path.name
    return path

  def photo(self, j: int) -> np.ndarray:
    """``[H, W, 3]`` float32 display RGB in [0, 1] of face ``j``'s photo."""
    with Image.open(self.image_path(j)) as image:
      return np.asarray(image.convert("RGB"), np.float32) / 255.0

  def view_of_fit(self, j: int) -> Dict[str, np.ndarray]:
    """The fitted pose of face ``j`` as a view dict (:func:`params.screen_points`)."""
    scale, pitch, yaw, roll, tx, ty = self.pose[j]
    return dict(scale=scale, pitch_rad=pitch, yaw_rad=yaw, roll_rad=roll,
                rotation=geometry.euler_to_matrix(pitch, yaw, roll),
                translation_px=np.array([tx, ty]))

  def face(self, j: int) -> Dict[str, object]:
    """Face ``j``: ``photo``, ``vertices [U, 3]``, ``normals [U, 3]`` (model frame),
    ``photo_view``, ``photo_screen [U, 3]``, ``photo_raster`` (``None`` when the lift comes from
    ``config.lifts``), ``texture``, ``annotation_surface`` (:func:`annotation_surface`),
    ``landmarks_px`` (annotation) and the coefficients."""
    j = int(j)
    if self._last[0] == j:
      return self._last[1]
    prepared = self.prepared
    static = self._static()
    photo = self.photo(j)
    vertices = prepared.vertices(self.shape_coefficients[j],
                                 self.expression_coefficients[j]).astype(np.float64)
    normals = shading.vertex_normals(vertices, prepared.triangles)
    view = self.view_of_fit(j)
    screen = params.screen_points(vertices, view)
    lifts = self._lifts()
    if lifts is None:
      raster = rasterizer.rasterize(screen, prepared.triangles, photo.shape[0], photo.shape[1])
      texture = lift_texture(photo, screen, raster, normals @ view["rotation"].T,
                             static["mirror"], static["adjacency"], static["albedo"])
      surface = annotation_surface(raster, self.landmarks_px[j])
    else:
      raster = None
      source = lifts["source"][j]
      texture = Texture(photo_px=texture_positions(screen, source, static["mirror"]),
                        source=source, colour=lifts["colour"][j].astype(np.float32))
      surface = (lifts["annotation_triangles"][j],
                 lifts["annotation_barycentrics"][j].astype(np.float64))
    face = dict(photo=photo, vertices=vertices, normals=normals, photo_view=view,
                photo_screen=screen, photo_raster=raster, texture=texture,
                annotation_surface=surface, landmarks_px=self.landmarks_px[j],
                shape_coefficients=self.shape_coefficients[j],
                expression_coefficients=self.expression_coefficients[j])
    self._last = (j, face)
    return face

  def _lifts(self) -> Optional[Dict[str, np.ndarray]]:
    """The lift cache's arrays (loaded and checked against these fits once), or ``None``."""
    if not self.config.lifts:
      return None
    if self._lift_cache is None:
      self._lift_cache = load_lifts(self.config.lifts, self)
    return self._lift_cache


def texture_positions(screen: np.ndarray, source: np.ndarray, mirror: np.ndarray) -> np.ndarray:
  """``[U, 2]`` float64 photo position of each vertex's colour: its own projection
  (``SOURCE_OWN``), its mirror vertex's (``SOURCE_MIRROR``), zeros where ``SOURCE_NONE``
  (as :func:`lift_texture` sets them). ``screen [U, 3]`` photo frame, ``mirror [U]``."""
  positions = np.zeros((screen.shape[0], 2))
  own, mirrored = source == SOURCE_OWN, source == SOURCE_MIRROR
  positions[own] = screen[own, :2]
  positions[mirrored] = screen[mirror[mirrored], :2]
  return positions


def annotation_surface(photo_raster: rasterizer.Raster, landmarks_px: np.ndarray):
  """Surface points ``(triangle [51] int, barycentrics [51, 3] float64)`` under the annotated
  inner landmarks (17-67, ``landmarks_px [68, 2]`` photo pixels) on the fitted mesh's photo
  raster; ``triangle -1`` where the mesh does not cover the annotated point."""
  _, tri, bary = rasterizer.front_surface_at(photo_raster, landmarks_px[17:])
  return tri, bary


LIFT_VERSION = 1


def lift_cache_key(bank: "RealFaces") -> Dict[str, object]:
  """What a lift cache must agree with: the fits file's bytes, the rendered mesh and the faces."""
  digest = hashlib.sha256(Path(bank.config.fits).read_bytes()).hexdigest()
  return dict(version=LIFT_VERSION, fits_sha256=digest,
              face_model=bank.config.pipeline.face_model,
              render_max_triangles=int(bank.config.pipeline.render_max_triangles),
              num_faces=len(bank), num_vertices=int(bank.prepared.mean.reshape(-1, 3).shape[0]))


def compute_lifts(bank: "RealFaces", log=None) -> Dict[str, np.ndarray]:
  """Every kept face's lift: ``source [N, U] int8``, ``colour [N, U, 3] float16`` (display RGB),
  ``annotation_triangles [N, 51] int32``, ``annotation_barycentrics [N, 51, 3] float32``.
  ``bank`` must lift per face (no ``config.lifts``)."""
  if bank.config.lifts:
    raise ValueError("compute_lifts needs a bank that lifts its faces (config.lifts empty)")
  n, u = len(bank), bank.prepared.mean.reshape(-1, 3).shape[0]
  out = dict(source=np.zeros((n, u), np.int8), colour=np.zeros((n, u, 3), np.float16),
             annotation_triangles=np.zeros((n, 51), np.int32),
             annotation_barycentrics=np.zeros((n, 51, 3), np.float32))
  for j in range(n):
    face = bank.face(j)
    out["source"][j] = face["texture"].source
    out["colour"][j] = face["texture"].colour
    out["annotation_triangles"][j], out["annotation_barycentrics"][j] = face["annotation_surface"]
    if log is not None and (j + 1) % 500 == 0:
      log(f"lifted {j + 1} / {n} faces")
  return out


def save_lifts(path, bank: "RealFaces", log=None) -> Dict[str, object]:
  """Writes the lift cache of ``bank``'s fits to ``path`` (``.npz``, atomically; keep it outside
  the repository: it holds colours of research-use photos). Returns its meta (:func:`lift_cache_key`)."""
  meta = lift_cache_key(bank)
  arrays = compute_lifts(bank, log)
  buffer = io.BytesIO()
  np.savez(buffer, meta=np.asarray(json.dumps(meta)), **arrays)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  file_io.write_bytes_atomic(path, buffer.getvalue())
  return meta


def load_lifts(path, bank: "RealFaces") -> Dict[str, np.ndarray]:
  """The arrays of the lift cache ``path``, checked against ``bank`` (:func:`lift_cache_key`);
  a cache of other fits, mesh or face model is refused with the command that rebuilds it."""
  path = Path(path)
  rebuild = (f"rebuild it with python -m experiments.lift_real_faces --fits={bank.config.fits} "
             f"--out={path}")
  if not path.is_file():
    raise FileNotFoundError(f"lift cache {path} not found: {rebuild}")
  with np.load(path) as data:
    meta = json.loads(str(data["meta"]))
    arrays = {k: data[k] for k in ("source", "colour", "annotation_triangles",
                                   "annotation_barycentrics")}
  expected = lift_cache_key(bank)
  differ = sorted(k for k in expected if meta.get(k) != expected[k])
  if differ:
    raise ValueError(f"lift cache {path} does not belong to these fits and settings (differs in "
                     f"{', '.join(differ)}): {rebuild}")
  return arrays


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
  ``index``) plus ``kind`` (0 = the photo, 1 = re-rendered).

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
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f"index {i} out of range for RealFaceSource of length {len(self)}")
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
                index=np.int64(i), kind=np.int32(0 if is_photo else 1))


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
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f"index {i} out of range for RealPairSource of length {len(self)}")
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
