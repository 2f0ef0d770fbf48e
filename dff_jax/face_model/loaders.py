"""Loading and saving face models (NumPy only; never imports JAX).

Layouts understood by :func:`load_face_model` (detected from the file's keys):

* **ours** (:func:`save_face_model`): every ``FaceModel`` field under its own name plus
  ``format_version``; bases may be stored as float16 and are returned as float32. The embedded
  default ``dff_jax/assets/face_model_ict.npz`` uses it.
* **ICT Face Model Light** npz (``identity_modes``, ``expression_modes``, ...; centimetres ->
  converted to mm). Identity modes are already scaled by their standard deviations. The 53 ARKit
  blendshapes are kept as the expression basis with prior ``expression_std = 0.3`` (weights live
  in [0, 1]; 0.3 is a zero-mean Gaussian prior wide enough for strong expressions).
* **Surrey Face Model** npz (``shape_basis`` orthonormal, ``shape_eigenvalues`` variances; mm):
  ``identity_basis = shape_basis * sqrt(eigenvalue)``; the 6 emotion blendshapes with
  ``expression_std = 0.5``. Jaw landmarks 0-7, 9-16 and inner mouth corners 60, 64 have no vertex
  in SFM: they are derived (see :mod:`dff_jax.face_model.contour`).
* **Basel Face Model 2009** ``01_MorphableModel.mat`` (``shapeMU [3V, 1]``, ``shapePC [3V, K]``,
  ``shapeEV [K]`` standard deviations as in BFM's own ``coef2object``: ``mu + PC @ (c * EV)``,
  ``texMU/texPC/texEV`` in 0..255, ``tl [T, 3]`` 1-based). Coordinates are micrometres (the mean
  face is ~160,000 units wide; BFM maintainers: "BFM 2009 micrometer, BFM 2017 and 2019
  millimeter", unibas-gravis/basel-face-model-viewer issue #20): divided by 1000 to get mm.
  Triangles are re-oriented counter-clockwise from the front if needed. BFM 2009 has no expressions (``Ke = 0``)
  and no landmarks: the 68 landmarks are transferred from the embedded default by a similarity ICP
  of the two mean shapes (or passed as ``landmark_vertex_ids``). ``.mat`` v7.3 (HDF5) files are not
  readable by SciPy: re-save them as v7 in MATLAB/Octave.

Models without albedo (ICT, SFM) get the per-region albedo of :mod:`dff_jax.face_model.albedo`;
models without contour candidates get them from :mod:`dff_jax.face_model.contour`, and so do
the 3D-convention landmarks (``landmark_3d_vertex_ids``: the jaw on the model's jaw line, from
ICT's ``right/left_contour_vertex_ids`` or SFM's contour polylines; BFM: transferred from the
default; the frontal ids when a model has no jaw line).

Length: a little over 500 lines: one loader per face-model format (ICT, SFM, BFM) and the
landmark and contour transfers they share.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from dff_jax.face_model import contour as contour_lib
from dff_jax.face_model import model as model_lib
from dff_jax.face_model.albedo import build_albedo_model
from dff_jax.face_model.model import FaceModel

PathLike = Union[str, Path]

FORMAT_VERSION = 1
ICT_EXPRESSION_STD = 0.3
SFM_EXPRESSION_STD = 0.5
ASSET_DIR = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_ASSET = ASSET_DIR / "face_model_ict.npz"
# ../shared next to the repository (optional; only for the "sfm" / "ict" shorthands).
SHARED_FACE_MODELS = Path(os.environ.get(
    "DFF_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared")) / "face_models"
SHORTHANDS = {
    "sfm": SHARED_FACE_MODELS / "sfm" / "sfm_3448.npz",
    "ict": SHARED_FACE_MODELS / "ict" / "ict_face_light.npz",
}
_ICT_KEYS = ("mean_vertices", "identity_modes", "expression_modes", "expression_names",
             "triangles", "vertex_part", "landmark_vertex_ids")
_SFM_KEYS = ("mean_vertices", "shape_basis", "shape_eigenvalues", "expression_basis",
             "expression_names", "triangles", "landmark_vertex_ids", "right_contour_vertex_ids",
             "left_contour_vertex_ids")
_BFM_KEYS = ("shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV", "tl")
_FLOAT_FIELDS = ("mean_vertices", "identity_basis", "expression_basis", "expression_std",
                 "albedo_mean", "albedo_basis")
_INT_FIELDS = ("triangles", "vertex_part", "landmark_vertex_ids", "landmark_3d_vertex_ids",
               "contour_candidates")
# Files of our layout written before the 3D-convention landmarks existed lack this key: their
# 3D landmarks are the frontal ones.
_OPTIONAL_FIELDS = ("landmark_3d_vertex_ids",)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def load_face_model(spec: PathLike = "default", *,
                    landmark_vertex_ids: Optional[np.ndarray] = None) -> FaceModel:
  """Loads a face model.

  Args:
    spec: ``"default"`` (the embedded ICT-derived asset), ``"sfm"`` / ``"ict"`` (the files in
      ``../shared/face_models``; override the folder with ``$DFF_SHARED_DIR``), or a path to an
      npz (our layout, ICT or SFM) or a BFM 2009 ``.mat``.
    landmark_vertex_ids: optional ``[68]`` int ids for a BFM ``.mat`` (default: transferred
      from the embedded default model).

  Returns:
    a validated :class:`FaceModel` with NumPy arrays (float32 / int32), model space in mm.

  Raises:
    FileNotFoundError: the file (or ../shared for a shorthand) is absent.
    ValueError: the file is not one of the layouts, or has wrong shapes / non-finite values.
  """
  if isinstance(spec, str) and spec == "default":
    return _load_path(DEFAULT_ASSET, name="ict_default")
  if isinstance(spec, str) and spec in SHORTHANDS:
    path = SHORTHANDS[spec]
    if not path.exists():
      raise FileNotFoundError(
          f"face model shorthand {spec!r} needs {path}, which is absent: ../shared is optional "
          f"(set $DFF_SHARED_DIR to its location) - use load_face_model('default') instead")
    return _load_path(path, name=spec)
  return _load_path(Path(spec), landmark_vertex_ids=landmark_vertex_ids)


@functools.lru_cache(maxsize=1)
def default_face_model() -> FaceModel:
  """The embedded default model, loaded once (arrays are read-only; copy before editing)."""
  model = load_face_model("default")
  for field in model_lib.DATA_FIELDS:
    getattr(model, field).flags.writeable = False
  return model


def save_face_model(model: FaceModel, path: PathLike, compact: bool = False) -> Path:
  """Saves ``model`` in our npz layout (``np.savez_compressed``).

  Args:
    model: a NumPy :class:`FaceModel`.
    path: output ``.npz`` path.
    compact: store the bases (identity, expression, albedo) and albedo mean as float16 (halves
      the size; ~1e-3 relative error), everything else float32 / int32.

  Returns:
    the path written.
  """
  path = Path(path)
  _validate(model, path)
  arrays = {}
  for field in model_lib.DATA_FIELDS:
    value = np.asarray(getattr(model, field))
    if field in _INT_FIELDS:
      value = value.astype(np.int8 if field == "vertex_part" else np.int32)
    elif compact and field in ("identity_basis", "expression_basis", "albedo_basis",
                               "albedo_mean"):
      value = value.astype(np.float16)
    else:
      value = value.astype(np.float32)
    arrays[field] = value
  arrays["name"] = np.asarray(model.name)
  arrays["expression_names"] = np.asarray(model.expression_names, dtype=str).reshape(-1)
  arrays["format_version"] = np.asarray(FORMAT_VERSION)
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(path, **arrays)
  return path


# ----------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------


def build_default_model(source: PathLike, num_identity: int = 60):
  """The embedded default model (``DEFAULT_ASSET``) from the ICT Face Model Light npz at
  ``source``: :func:`load_face_model` of it (cm -> mm, 53 ARKit blendshapes with prior std 0.3,
  contour candidates, the seeded procedural albedo) keeping the ``num_identity`` identity modes of
  largest energy, in decreasing order (deterministic: ``experiments.build_default_face_model``
  and the ``face_model_ict`` recipe of ``dff_jax/assets/MANIFEST.json``).

  Returns:
    ``(model, energy, keep)``: the model, the energy of every ICT identity mode ``[100]`` and the
    indices kept.
  """
  model = load_face_model(Path(source))
  energy = np.sum(model.identity_basis.astype(np.float64) ** 2, axis=(1, 2))
  keep = np.sort(np.argsort(-energy)[:num_identity])
  keep = keep[np.argsort(-energy[keep], kind="stable")]
  return model.replace(identity_basis=model.identity_basis[keep], name="ict_default"), energy, keep


def _load_path(path: Path, name: Optional[str] = None,
               landmark_vertex_ids: Optional[np.ndarray] = None) -> FaceModel:
  if not path.exists():
    raise FileNotFoundError(
        f"face model file {path} does not exist; expected 'default', 'sfm', 'ict', an npz "
        f"(our layout, ICT or SFM) or a BFM 2009 01_MorphableModel.mat")
  if path.suffix.lower() == ".mat":
    model = _from_bfm(_read_mat(path), path, landmark_vertex_ids)
  else:
    try:
      with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    except Exception as error:  # zip/pickle/format errors
      raise ValueError(f"{path} is not a readable .npz face model ({error})") from error
    if "format_version" in arrays:
      model = _from_ours(arrays, path)
    elif "identity_modes" in arrays:
      model = _from_ict(arrays, path)
    elif "shape_basis" in arrays:
      model = _from_sfm(arrays, path)
    else:
      raise ValueError(
          f"{path} has keys {sorted(arrays)}, which match no known face-model layout: expected "
          f"ours (format_version, {', '.join(model_lib.DATA_FIELDS)}), ICT ({', '.join(_ICT_KEYS)})"
          f" or SFM ({', '.join(_SFM_KEYS)})")
  if name is not None:
    model = model.replace(name=name)
  _validate(model, path)
  return model


def _require(arrays: dict, keys, path: Path, layout: str) -> None:
  missing = [key for key in keys if key not in arrays]
  if missing:
    raise ValueError(f"{path} looks like the {layout} layout but lacks keys {missing} "
                     f"(has {sorted(arrays)})")


def _check_shape(value: np.ndarray, shape, what: str, path: Path) -> None:
  """``shape`` entries None match anything."""
  ok = value.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, value.shape))
  if not ok:
    wanted = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
    raise ValueError(f"{path}: {what} has shape {list(value.shape)}, expected {wanted}")


def _finalise(path: Path, name: str, mean: np.ndarray, identity: np.ndarray,
              expression: np.ndarray, expression_std: np.ndarray, triangles: np.ndarray,
              vertex_part: np.ndarray, landmark_vertex_ids: np.ndarray,
              expression_names, albedo=None, contour_candidates=None,
              jaw_lines=None, landmark_3d_vertex_ids=None) -> FaceModel:
  """Adds contour candidates, 3D-convention landmarks and albedo where missing; casts dtypes.

  ``jaw_lines``: optional ``(right_ids, left_ids)`` jaw-line vertex ids, in order, from
  which the 3D-convention jaw is made (:func:`contour.jaw_line_at_landmark_heights`); without
  them (and without ``landmark_3d_vertex_ids``) the 3D landmarks are the frontal ones."""
  for what, value in (("mean vertices", mean), ("identity basis", identity),
                      ("expression basis", expression)):
    if not np.all(np.isfinite(value)):
      raise ValueError(f"{path}: the {what} contains NaN or infinite values")
  if contour_candidates is None:
    contour_candidates = contour_lib.build_contour_candidates(
        mean, vertex_part, landmark_vertex_ids[:17])
  if albedo is None:
    albedo = build_albedo_model(mean, triangles, vertex_part, landmark_vertex_ids)
  if landmark_3d_vertex_ids is None:
    landmark_3d_vertex_ids = np.asarray(landmark_vertex_ids).copy()
    if jaw_lines is not None:
      skin = np.flatnonzero(np.isin(vertex_part, (model_lib.PART_FACE, model_lib.PART_HEAD_NECK)))
      landmark_3d_vertex_ids[:17] = contour_lib.jaw_line_at_landmark_heights(
          mean, skin, jaw_lines[0], jaw_lines[1], landmark_vertex_ids[:17])
  return FaceModel(
      mean_vertices=np.asarray(mean, np.float32),
      identity_basis=np.asarray(identity, np.float32),
      expression_basis=np.asarray(expression, np.float32),
      expression_std=np.asarray(expression_std, np.float32),
      triangles=np.asarray(triangles, np.int32),
      vertex_part=np.asarray(vertex_part, np.int32),
      landmark_vertex_ids=np.asarray(landmark_vertex_ids, np.int32),
      landmark_3d_vertex_ids=np.asarray(landmark_3d_vertex_ids, np.int32),
      contour_candidates=np.asarray(contour_candidates, np.int32),
      albedo_mean=np.asarray(albedo[0], np.float32),
      albedo_basis=np.asarray(albedo[1], np.float32),
      name=name,
      expression_names=tuple(str(n) for n in expression_names))


def _from_ours(arrays: dict, path: Path) -> FaceModel:
  _require(arrays, tuple(f for f in model_lib.DATA_FIELDS if f not in _OPTIONAL_FIELDS)
           + ("name", "expression_names"), path, "dff_jax (ours)")
  if "landmark_3d_vertex_ids" not in arrays:
    arrays = dict(arrays, landmark_3d_vertex_ids=arrays["landmark_vertex_ids"])
  if int(arrays["format_version"]) != FORMAT_VERSION:
    raise ValueError(f"{path}: format_version {int(arrays['format_version'])} is not supported "
                     f"(this code reads {FORMAT_VERSION})")
  fields = {}
  for field in model_lib.DATA_FIELDS:
    value = arrays[field]
    fields[field] = value.astype(np.int32 if field in _INT_FIELDS else np.float32)
    if field in _FLOAT_FIELDS and not np.all(np.isfinite(fields[field])):
      raise ValueError(f"{path}: {field} contains NaN or infinite values")
  return FaceModel(**fields, name=str(arrays["name"]),
                   expression_names=tuple(str(n) for n in arrays["expression_names"]))


def _from_ict(arrays: dict, path: Path) -> FaceModel:
  _require(arrays, _ICT_KEYS, path, "ICT Face Model Light")
  mean = arrays["mean_vertices"]
  _check_shape(mean, (None, 3), "mean_vertices", path)
  num_vertices = mean.shape[0]
  _check_shape(arrays["identity_modes"], (None, num_vertices, 3), "identity_modes", path)
  _check_shape(arrays["expression_modes"], (None, num_vertices, 3), "expression_modes", path)
  _check_shape(arrays["landmark_vertex_ids"], (model_lib.NUM_LANDMARKS,), "landmark_vertex_ids",
               path)
  cm_to_mm = 10.0
  num_expression = arrays["expression_modes"].shape[0]
  return _finalise(
      path, "ict", mean.astype(np.float64) * cm_to_mm,
      arrays["identity_modes"].astype(np.float32) * cm_to_mm,
      arrays["expression_modes"].astype(np.float32) * cm_to_mm,
      np.full(num_expression, ICT_EXPRESSION_STD), arrays["triangles"], arrays["vertex_part"],
      arrays["landmark_vertex_ids"], arrays["expression_names"],
      jaw_lines=_jaw_lines(arrays, num_vertices, path))


def _from_sfm(arrays: dict, path: Path) -> FaceModel:
  _require(arrays, _SFM_KEYS, path, "Surrey Face Model")
  mean = arrays["mean_vertices"].astype(np.float64)
  _check_shape(mean, (None, 3), "mean_vertices", path)
  num_vertices = mean.shape[0]
  basis, eigenvalues = arrays["shape_basis"], arrays["shape_eigenvalues"]
  _check_shape(basis, (None, num_vertices, 3), "shape_basis", path)
  _check_shape(eigenvalues, (basis.shape[0],), "shape_eigenvalues", path)
  if np.any(eigenvalues < 0) or not np.all(np.isfinite(eigenvalues)):
    raise ValueError(f"{path}: shape_eigenvalues must be finite variances >= 0")
  _check_shape(arrays["expression_basis"], (None, num_vertices, 3), "expression_basis", path)
  _check_shape(arrays["landmark_vertex_ids"], (model_lib.NUM_LANDMARKS,), "landmark_vertex_ids",
               path)
  identity = basis.astype(np.float32) * np.sqrt(eigenvalues).astype(np.float32)[:, None, None]
  landmarks = fill_sfm_landmarks(mean, arrays["triangles"], arrays["landmark_vertex_ids"],
                                 arrays["right_contour_vertex_ids"],
                                 arrays["left_contour_vertex_ids"])
  vertex_part = np.full(num_vertices, model_lib.PART_FACE, np.int32)
  num_expression = arrays["expression_basis"].shape[0]
  return _finalise(path, "sfm", mean, identity, arrays["expression_basis"],
                   np.full(num_expression, SFM_EXPRESSION_STD), arrays["triangles"], vertex_part,
                   landmarks, arrays["expression_names"],
                   jaw_lines=_jaw_lines(arrays, num_vertices, path))


def _jaw_lines(arrays: dict, num_vertices: int, path: Path):
  """``(right, left)`` jaw-line vertex ids in order along the line (ICT's "extended jawline",
  SFM's contour polylines) or ``None`` when the file has none."""
  keys = ("right_contour_vertex_ids", "left_contour_vertex_ids")
  if not all(key in arrays for key in keys):
    return None
  lines = []
  for key in keys:
    ids = np.asarray(arrays[key]).reshape(-1)
    if ids.size < 2 or ids.min() < 0 or ids.max() >= num_vertices:
      raise ValueError(f"{path}: {key} must hold at least 2 vertex ids in [0, {num_vertices})")
    lines.append(ids)
  return tuple(lines)


def fill_sfm_landmarks(mean: np.ndarray, triangles: np.ndarray, landmark_vertex_ids: np.ndarray,
                       right_contour_ids: np.ndarray, left_contour_ids: np.ndarray) -> np.ndarray:
  """Fills the SFM landmarks that have no vertex (-1): jaw 0-7, 9-16 and mouth 60, 64.

  Jaw: :func:`contour.frontal_jaw_from_contour_polylines` starting at the outer eye corners'
  height + 2 mm. Inner mouth corners: :func:`contour.inner_mouth_corner` (outer corner moved
  4 mm towards the mean of landmarks 62 and 66).

  Args:
    mean: ``[V, 3]`` mean mesh (mm). triangles: ``[T, 3]`` int.
    landmark_vertex_ids: ``[68]`` int with -1 for missing.
    right_contour_ids, left_contour_ids: ``[C]`` contour polylines, top to bottom.

  Returns:
    ``[68]`` int32, all valid.
  """
  ids = np.asarray(landmark_vertex_ids, np.int64).copy()
  missing_jaw = ids[:17] < 0
  if missing_jaw.any():
    start = 0.5 * (mean[ids[36], 1] + mean[ids[45], 1]) + 2.0
    jaw = contour_lib.frontal_jaw_from_contour_polylines(
        mean, triangles, right_contour_ids, left_contour_ids, int(ids[8]), start)
    ids[:17] = np.where(missing_jaw, jaw, ids[:17])
  centre = 0.5 * (mean[ids[62]] + mean[ids[66]])
  if ids[60] < 0:
    ids[60] = contour_lib.inner_mouth_corner(mean, int(ids[48]), centre, exclude=(ids[62],))
  if ids[64] < 0:
    ids[64] = contour_lib.inner_mouth_corner(mean, int(ids[54]), centre, exclude=(ids[62],))
  return ids.astype(np.int32)


def _read_mat(path: Path) -> dict:
  import scipy.io  # pylint: disable=g-import-not-at-top
  try:
    return scipy.io.loadmat(str(path))
  except NotImplementedError as error:
    raise ValueError(f"{path} is a MATLAB v7.3 (HDF5) file, which SciPy cannot read; re-save it "
                     f"with save(..., '-v7') in MATLAB or Octave") from error
  except Exception as error:
    raise ValueError(f"{path} is not a readable MATLAB .mat file ({error})") from error


def _from_bfm(mat: dict, path: Path, landmark_vertex_ids: Optional[np.ndarray]) -> FaceModel:
  arrays = {key: value for key, value in mat.items() if not key.startswith("__")}
  _require(arrays, _BFM_KEYS, path, "Basel Face Model 2009 (01_MorphableModel.mat)")
  micrometre_to_mm = 1e-3
  shape_mu = np.asarray(arrays["shapeMU"], np.float64).reshape(-1)
  if shape_mu.size % 3:
    raise ValueError(f"{path}: shapeMU has {shape_mu.size} values, expected 3 * V")
  num_vertices = shape_mu.size // 3
  shape_ev = np.asarray(arrays["shapeEV"], np.float64).reshape(-1)
  shape_pc = np.asarray(arrays["shapePC"])
  _check_shape(shape_pc, (3 * num_vertices, shape_ev.size), "shapePC", path)
  tex_mu = np.asarray(arrays["texMU"], np.float64).reshape(-1)
  tex_ev = np.asarray(arrays["texEV"], np.float64).reshape(-1)
  tex_pc = np.asarray(arrays["texPC"])
  _check_shape(tex_mu, (3 * num_vertices,), "texMU", path)
  _check_shape(tex_pc, (3 * num_vertices, tex_ev.size), "texPC", path)
  triangles = np.asarray(arrays["tl"]).astype(np.int64)
  _check_shape(triangles, (None, 3), "tl", path)
  if triangles.min() < 1 or triangles.max() > num_vertices:
    raise ValueError(f"{path}: tl must hold 1-based vertex ids in [1, {num_vertices}]")
  triangles = triangles - 1
  for what, value in (("shapeMU", shape_mu), ("shapePC", shape_pc), ("shapeEV", shape_ev),
                      ("texMU", tex_mu), ("texPC", tex_pc), ("texEV", tex_ev)):
    if not np.all(np.isfinite(value)):
      raise ValueError(f"{path}: {what} contains NaN or infinite values")
  mean = shape_mu.reshape(num_vertices, 3) * micrometre_to_mm
  identity = (shape_pc * shape_ev[None, :]).T.reshape(-1, num_vertices, 3) * micrometre_to_mm
  albedo_mean = np.clip(tex_mu.reshape(num_vertices, 3) / 255.0, 0, 1)
  albedo_basis = (tex_pc * tex_ev[None, :]).T.reshape(-1, num_vertices, 3) / 255.0
  triangles = orient_triangles_front(mean, triangles)
  # Given ids are BFM's own 68 fixed vertices (e.g. 3DDFA's), i.e. both conventions at once;
  # transferred ones take each convention from the embedded default.
  landmark_3d_vertex_ids = landmark_vertex_ids
  if landmark_vertex_ids is None:
    default = default_face_model()
    landmark_vertex_ids, landmark_3d_vertex_ids = transfer_landmarks(
        default, mean, vertex_ids=np.stack([default.landmark_vertex_ids,
                                            default.landmark_3d_vertex_ids]))
  landmark_vertex_ids = np.asarray(landmark_vertex_ids)
  _check_shape(landmark_vertex_ids, (model_lib.NUM_LANDMARKS,), "landmark_vertex_ids", path)
  vertex_part = np.full(num_vertices, model_lib.PART_FACE, np.int32)
  return _finalise(path, "bfm2009", mean, identity.astype(np.float32),
                   np.zeros((0, num_vertices, 3), np.float32), np.zeros(0), triangles,
                   vertex_part, landmark_vertex_ids, (), albedo=(albedo_mean, albedo_basis),
                   landmark_3d_vertex_ids=np.asarray(landmark_3d_vertex_ids))


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def orient_triangles_front(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
  """Flips the winding of all triangles if the ones near the front-most vertex (nose tip) face
  away from the viewer (+z), so triangles are counter-clockwise seen from the front.
  Returns ``[T, 3]`` int."""
  v = np.asarray(vertices, np.float64)
  tip = v[np.argmax(v[:, 2])]
  centres = v[triangles].mean(axis=1)
  near = np.linalg.norm(centres - tip, axis=1) < 30.0
  normals = np.cross(v[triangles[:, 1]] - v[triangles[:, 0]], v[triangles[:, 2]] - v[triangles[:, 0]])
  if np.sum(normals[near, 2]) < 0:
    return triangles[:, ::-1].copy()
  return triangles


def transfer_landmarks(source: FaceModel, target_vertices: np.ndarray,
                       iterations: int = 30, vertex_ids: Optional[np.ndarray] = None
                       ) -> np.ndarray:
  """Transfers the 68 landmark vertices of ``source`` to another mesh of a face.

  Similarity ICP (Umeyama per iteration) of the source mean's face vertices within 80 mm of its
  nose tip onto the target vertices, started by matching the nose tips (source landmark 30,
  target front-most vertex); then each transformed source landmark takes its nearest target
  vertex. Both meshes must use our model frame (x left, y up, z to the viewer, mm).

  Args:
    source: model with landmarks (e.g. the embedded default).
    target_vertices: ``[V, 3]`` target mean mesh (mm).
    iterations: ICP iterations.
    vertex_ids: ``[..., N]`` source vertex ids to transfer (default: its 68
      ``landmark_vertex_ids``).

  Returns:
    ``[..., N]`` (default ``[68]``) int32 target vertex ids.
  """
  from scipy.spatial import cKDTree  # pylint: disable=g-import-not-at-top
  from dff_jax import geometry  # pylint: disable=g-import-not-at-top
  target = np.asarray(target_vertices, np.float64)
  src_all = np.asarray(source.mean_vertices, np.float64)
  nose = src_all[source.landmark_vertex_ids[30]]
  keep = (np.asarray(source.vertex_part) == model_lib.PART_FACE) & (
      np.linalg.norm(src_all - nose, axis=1) < 80.0)
  src = src_all[keep]
  tree = cKDTree(target)
  scale, rotation = 1.0, np.eye(3)
  translation = target[np.argmax(target[:, 2])] - nose
  for _ in range(iterations):
    moved = geometry.apply_similarity(src, scale, rotation, translation)
    distance, nearest = tree.query(moved)
    inliers = distance < max(np.percentile(distance, 80), 1e-6)
    scale, rotation, translation = geometry.estimate_similarity(src[inliers],
                                                                target[nearest[inliers]])
  if vertex_ids is None:
    vertex_ids = source.landmark_vertex_ids
  vertex_ids = np.asarray(vertex_ids)
  points = geometry.apply_similarity(src_all[vertex_ids.reshape(-1)], scale, rotation,
                                     translation)
  return tree.query(points)[1].astype(np.int32).reshape(vertex_ids.shape)


def _validate(model: FaceModel, path: Path) -> None:
  """Raises ValueError naming ``path`` if the model's arrays are inconsistent."""
  v = np.asarray(model.mean_vertices).shape[0]
  checks = (
      ("mean_vertices", (v, 3)), ("identity_basis", (None, v, 3)),
      ("expression_basis", (None, v, 3)),
      ("expression_std", (np.asarray(model.expression_basis).shape[0],)),
      ("triangles", (None, 3)), ("vertex_part", (v,)),
      ("landmark_vertex_ids", (model_lib.NUM_LANDMARKS,)),
      ("landmark_3d_vertex_ids", (model_lib.NUM_LANDMARKS,)), ("contour_candidates", (17, None)),
      ("albedo_mean", (v, 3)), ("albedo_basis", (None, v, 3)))
  for field, shape in checks:
    _check_shape(np.asarray(getattr(model, field)), shape, field, path)
  for field in ("triangles", "landmark_vertex_ids", "landmark_3d_vertex_ids",
                "contour_candidates"):
    ids = np.asarray(getattr(model, field))
    if ids.size and (ids.min() < 0 or ids.max() >= v):
      raise ValueError(f"{path}: {field} must hold vertex ids in [0, {v}), found "
                       f"[{ids.min()}, {ids.max()}]")
  if not np.array_equal(np.asarray(model.contour_candidates)[:, 0],
                        np.asarray(model.landmark_vertex_ids)[:17]):
    raise ValueError(f"{path}: contour_candidates[:, 0] must equal landmark_vertex_ids[:17]")
  if len(model.expression_names) not in (0, np.asarray(model.expression_basis).shape[0]):
    raise ValueError(f"{path}: {len(model.expression_names)} expression_names for "
                     f"{np.asarray(model.expression_basis).shape[0]} expression modes")
