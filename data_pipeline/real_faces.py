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
* **Views and sources** (the training data made of this bank) are
  :mod:`data_pipeline.real_views`: re-rendered large-pose views, the photo as a view, and the
  sources :class:`~data_pipeline.real_views.RealFaceSource` (alignment cascade) and
  :class:`~data_pipeline.real_views.RealPairSource` (encoder).

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

from dff_jax import face_model as face_model_lib
from dff_jax import file_io, geometry

from data_pipeline import params, rasterizer, shading
from data_pipeline.config import PipelineConfig

SOURCE_OWN, SOURCE_MIRROR, SOURCE_NONE = 0, 1, 2
# A vertex takes its colour from a side of the photo whose surface normal has at least this
# camera-facing component (grazing surfaces stretch a few pixels over the whole triangle).
MIN_FACING = 0.3
# iBUG-68 left-right permutation (index i of a mirrored face is landmark MIRROR_68[i]).
MIRROR_68 = np.array(face_model_lib.MIRROR_LANDMARKS)


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
