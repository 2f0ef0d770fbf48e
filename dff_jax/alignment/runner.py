"""Loading and compiling a trained cascade; the host-side crops and face boxes of one image.

The machinery under the public :class:`dff_jax.Aligner`. File streaming (jobs, batches, image
lists, boxes files) is :mod:`dff_jax.alignment.streaming`; evaluation sets and their summaries are
:mod:`dff_jax.evaluation.alignment`.

**Batching (static shapes).** Images differ in size, so each face is first cut out **on the
host**: its square crop box ``geometry.square_box(box, config.box_scale)`` (the frame the cascade
works in) is resampled with Pillow's antialiasing bilinear filter to a *working image* of
``work_size = WORK_SCALE * crop_size`` pixels (area outside the image is black, as in
:func:`dff_jax.sampling.crop_image`). Each working image is its face's crop box, so the jitted
:func:`dff_jax.alignment.cascade.align_working_images` reduces it to the crop by an exact 2 x 2
mean (what :func:`dff_jax.sampling.crop_image` reads there, without its gathers). Every batch is
then ``[batch_size, work_size, work_size, C]`` uint8 (the last one padded by repeating its last
face), so the function compiles once per run whatever the image sizes. ``C`` is the number of
colour channels the descriptor reads (:attr:`CompiledCascade.channels`): 1 for the grey DFF
encoders and SIFT, whose working images are cut as BT.601 luma (from an RGB photo, or from a
photo decoded grey, ``read_image(path, grey=True)``, which is cheaper for JPEGs), 3 otherwise. Results are mapped back
from the working image to the original image pixels on the host (landmarks, crop box, pose scale
and translation; the rotation and the shape coefficients do not change).

**Face boxes.** ``(x0, y0, x1, y1)`` in image pixels (x right, y down, pixel ``(i, j)`` centred
at ``(j + 0.5, i + 0.5)``), the bounding box of the face's 68 landmarks, as the cascade was
trained. A job gives one box ``[4]``, several ``[N, 4]`` (each its own face and its own crop in
the batch), :data:`DETECT` / ``None`` (every face :func:`dff_jax.detection.detect_faces` finds,
with its score; possibly none) or :data:`WHOLE_IMAGE` (the centred square of side
``max(H, W) / box_scale``, so that the crop box is the square around the whole image).
Detection runs on the host, in the worker that decodes the image, before the working crops.

**Compilation.** The jitted function belongs to the :class:`CompiledCascade` (compiled ahead of
time once per batch size, :meth:`CompiledCascade.compile`); :func:`load_aligner` keeps the last
two of the process, so repeated calls with the same files compile once.

**Threads.** One batch runs at a time in the process (:data:`EXECUTION_LOCK`): on XLA:CPU
(jaxlib 0.10.2, 2 cores) two threads running the cascade at once hung for good, both waiting
(a program with LAPACK's Cholesky inside a loop, run from two threads, is enough: each blocks a
thread of XLA's pool, as large as the cores, waiting for work the other holds; a larger pool,
``NPROC=4``, lets it finish). Threads may share an aligner. To use more cores, use processes
(:mod:`dff_jax.cpu_processes`, ``align --processes``).
"""
from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from dff_jax import geometry
from dff_jax import image_io
from dff_jax.alignment import cascade
from dff_jax.alignment import features as features_lib
from dff_jax.alignment import io as cascade_io
from dff_jax.alignment import results
from dff_jax.face_model import model as face_model_lib

Array = Any
ASSETS = features_lib.ASSETS
WORK_SCALE = 2
# A job's box: find every face with the detector / use the whole image as the face crop.
DETECT = "detect"
WHOLE_IMAGE = "whole"


def asks_detection(box: Any) -> bool:
  """Whether a face-box entry (see :func:`face_boxes`) asks for the detector: ``None`` or
  :data:`DETECT`."""
  return box is None or (isinstance(box, str) and box == DETECT)


# Shipped cascades by name (``--cascade=NAME``); each file names its encoder in its meta.
NAMED_CASCADES = {
    # Trained on real photos (faces68: research-use terms) and synthetic renders: the default.
    "default": "cascade_dff.npz",
    # Trained on synthetic renders of the embedded face model only (no research-use data).
    "synthetic": "cascade_dff_synthetic.npz",
    # The default's data and encoder on 96 px crops: about 1.5x faster, a little less accurate
    # on photos (WORKSPACE.md section 15). Research-use terms, as the default.
    "fast": "cascade_dff_fast.npz",
}


def default_cascade_path(features: str) -> Path:
  """The shipped cascade for ``features`` (``dff_jax/assets/cascade_<features>.npz``)."""
  return ASSETS / f"cascade_{features}.npz"


def named_cascade_path(name: str | os.PathLike) -> Path:
  """``NAMED_CASCADES[name]`` under the assets, or ``name`` itself as a path.

  Raises:
    ValueError: ``name`` is neither a string nor a path (or empty)."""
  if not isinstance(name, (str, os.PathLike)) or not str(name):
    raise ValueError(f"cascade must be a shipped cascade's name {sorted(NAMED_CASCADES)} or the "
                     f"path of a cascade .npz file, got {name!r}")
  if str(name) in NAMED_CASCADES:
    return ASSETS / NAMED_CASCADES[str(name)]
  return Path(name)


# ----------------------------------------------------------------------------------------------
# Loading a cascade and its descriptor (checks first, without touching JAX)
# ----------------------------------------------------------------------------------------------


# Held while a compiled cascade runs (CompiledCascade.dispatch): see the module docstring,
# "Threads".
EXECUTION_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class AlignerSpec:
  """Resolved, existence-checked inputs of :func:`load_aligner`.

  Attributes:
    features: ``"dff"`` or ``"sift"``.
    cascade_path: the cascade file.
    checkpoint: the DFF bundle / workdir (``None`` for SIFT).
    face_model: face-model spec for :func:`dff_jax.face_model.load_face_model`.
    header: the cascade file's header.
    mirror: align every face also mirrored left-right and combine the two estimates
      (test-time mirroring, :func:`dff_jax.alignment.cascade.apply_stage`): about twice the work.
    fit_modes: solve every stage's shape fit in this many directions of the coefficient space
      instead of the cascade's own (:func:`dff_jax.alignment.cascade.with_fit_modes`; ``None``:
      the cascade file's, :func:`dff_jax.alignment.cascade.fit_modes_of`): for measuring what
      the fit's size costs; regressors trained with another fit give other landmarks.
    matmul_dtype: the DFF encoder's matrix products in this operand dtype instead of its
      bundle's (``"bfloat16"`` or ``"float32"``; :class:`dff_jax.encoder.DFFEncoder`); ``None``:
      the bundle's (float32).
  """
  features: str
  cascade_path: Path
  checkpoint: Optional[Path]
  face_model: str
  header: Dict[str, Any]
  mirror: bool = False
  fit_modes: Optional[int] = None
  matmul_dtype: Optional[str] = None


def resolve_aligner(cascade_path: Optional[str | os.PathLike] = None,
                    features: Optional[str] = None,
                    checkpoint: Optional[str | os.PathLike] = None,
                    face_model: Optional[str] = None, mirror: bool = False,
                    other_encoder: bool = False, fit_modes: Optional[int] = None,
                    matmul_dtype: Optional[str] = None) -> AlignerSpec:
  """Finds the cascade / checkpoint / face model to use and checks they exist (no JAX, except
  to compare a given checkpoint with the encoder the cascade was trained with).

  Args:
    cascade_path: a cascade ``.npz``, or a shipped one by name (:data:`NAMED_CASCADES`:
      ``"default"``, ``"synthetic"``, ``"fast"``); ``None`` = the shipped ``cascade_<features>.npz``.
    features: ``"dff"`` / ``"sift"``; ``None`` = the cascade's own (``"dff"`` for the default).
      Must agree with the cascade file.
    checkpoint: DFF bundle / training workdir; ``None`` = the encoder the cascade names
      (:func:`dff_jax.alignment.features.encoder_for_cascade`), else the shipped
      ``dff_default`` bundle. Ignored for SIFT.
    face_model: ``"default"``, ``"ict"``, ``"sfm"`` or a path; ``None`` = the cascade's.
    mirror, fit_modes, matmul_dtype: test-time mirroring, the shape fit's directions, the
      encoder's matrix products (:class:`AlignerSpec`).
    other_encoder: accept a ``checkpoint`` other than the encoder the cascade names (its
      regressors were fitted to that encoder's descriptors: another's give wrong landmarks,
      so by default that is refused; tools that fit new weights for the given encoder, such as
      the output refinement, pass ``True``).

  Raises:
    FileNotFoundError / ValueError: with one-line messages naming the missing file and the flag
      that supplies it, or a checkpoint that is not the cascade's encoder.
  """
  if features is not None and features not in features_lib.FEATURE_KINDS:
    raise ValueError(f"unknown features {features!r}: use one of {features_lib.FEATURE_KINDS}")
  if cascade_path is None:
    kind = features or "dff"
    path = default_cascade_path(kind)
    if not path.is_file():
      raise FileNotFoundError(
          f"the default {kind} cascade {path} is not shipped with this install yet: pass "
          "--cascade=FILE (train one with python -m experiments.train_alignment)")
  else:
    path = named_cascade_path(cascade_path)
  header = cascade_io.read_cascade_header(path)
  meta = header.get("meta", {})
  kind = str(meta.get("features", features or "dff"))
  if features is not None and features != kind:
    raise ValueError(f"--features={features} but cascade {path} was trained on {kind} "
                     f"descriptors; drop --features or pass a {features} cascade")
  if kind not in features_lib.FEATURE_KINDS:
    raise ValueError(f"cascade {path} names unknown features {kind!r}")
  bundle = None
  if kind == "dff":
    bundle = (Path(checkpoint) if checkpoint
              else features_lib.encoder_for_cascade(path, meta))
    if not bundle.exists():
      if checkpoint:
        raise FileNotFoundError(f"DFF checkpoint {bundle} does not exist: pass --checkpoint=DIR "
                                "with a training workdir or an exported bundle")
      raise FileNotFoundError(
          f"the DFF encoder {bundle} that cascade {path} names does not exist (a shipped "
          "cascade's encoder is missing from this install, or the cascade file was moved "
          "without its encoder folder): pass --checkpoint=DIR (a training workdir or an "
          "exported bundle)")
    trained = features_lib.named_encoder(path, meta)
    if (checkpoint and not other_encoder and trained is not None and trained.exists()
        and not features_lib.same_encoder(bundle, trained)):
      raise ValueError(
          f"--checkpoint={checkpoint} is not the encoder cascade {path} was trained with "
          f"({trained}): its regressors read that encoder's descriptors, so another encoder "
          "gives wrong landmarks. Drop --checkpoint, or train a cascade for this encoder "
          "(python -m experiments.train_alignment)")
  model_spec = face_model or str(meta.get("face_model", "default"))
  if model_spec not in ("default", "ict", "sfm") and not Path(model_spec).is_file():
    raise FileNotFoundError(f"face model {model_spec} does not exist: pass --face_model=default "
                            "or the path of a face model file")
  if fit_modes is not None:
    fit_modes = cascade.checked_fit_modes(fit_modes, "--fit_modes",
                                          "leave it out for the cascade's own")
  if matmul_dtype is not None:
    matmul_dtype = features_lib.checked_matmul_dtype(matmul_dtype, kind)
  return AlignerSpec(features=kind, cascade_path=path, checkpoint=bundle, face_model=model_spec,
                     header=header, mirror=bool(mirror), fit_modes=fit_modes,
                     matmul_dtype=matmul_dtype)


@dataclasses.dataclass
class CompiledCascade:
  """A loaded cascade with its descriptor and face model, ready for
  :func:`dff_jax.alignment.streaming.run_jobs` (the
  machinery under the public :class:`dff_jax.Aligner`).

  Attributes:
    spec: what was loaded.
    describer: the descriptor function (DFF encoder or dense SIFT).
    face_model: the 3DMM (NumPy arrays; for drawing and JSON).
    alignment_model: the same model as JAX arrays plus normals (for the cascade).
    params: the cascade regressors.
    config: the cascade's static settings.
    meta: the cascade file's meta (features, training notes).
    work_size: side of the host-side working image (``WORK_SCALE * crop_size``).
  """
  spec: AlignerSpec
  describer: features_lib.Describer
  face_model: face_model_lib.FaceModel
  alignment_model: cascade.AlignmentModel
  params: cascade.CascadeParams
  config: cascade.CascadeConfig
  meta: Dict[str, Any]
  work_size: int
  _jitted: Optional[Callable] = None
  _compiled: Dict[int, Any] = dataclasses.field(default_factory=dict)
  compile_seconds: Dict[int, float] = dataclasses.field(default_factory=dict)

  @property
  def name(self) -> str:
    return self.spec.features

  @property
  def channels(self) -> int:
    """Colour channels of the working images (:func:`working_crop`): the descriptor's
    (``describer.channels``: 1 when it reads only the luma, as the shipped encoders do)."""
    return self.describer.channels

  @property
  def min_agreement(self) -> Optional[float]:
    """The agreement below which a face may be no face (the meta ``agreement`` that
    ``python -m experiments.fit_agreement`` writes with the descriptor template), or ``None``."""
    value = self.meta.get("agreement", {}).get("min_agreement")
    return None if value is None else float(value)

  def compile(self, batch_size: int) -> float:
    """Compiles the jitted cascade for ``batch_size`` faces (once per aligner and batch size).

    Returns:
      The seconds spent lowering and compiling (``0.0`` when it was compiled already; the first
      time is kept in ``compile_seconds[batch_size]``).
    """
    batch_size = int(batch_size)
    if batch_size in self._compiled:
      return 0.0
    if self._jitted is None:
      describer, config, mirror = self.describer, self.config, self.spec.mirror

      def run(describer_params, alignment_model, params, images):
        return cascade.align_working_images(
            lambda crops: describer.apply(describer_params, crops), alignment_model, params,
            images, config, mirror=mirror)
      self._jitted = jax.jit(run)
    size = self.work_size
    start = time.perf_counter()
    self._compiled[batch_size] = self._jitted.lower(
        self.describer.params, self.alignment_model, self.params,
        jax.ShapeDtypeStruct((batch_size, size, size, self.channels), jnp.uint8)).compile()
    self.compile_seconds[batch_size] = time.perf_counter() - start
    return self.compile_seconds[batch_size]

  def dispatch(self, work_images: np.ndarray) -> Any:
    """Runs the jitted cascade on one batch, one batch at a time in the process
    (:data:`EXECUTION_LOCK`, module docstring: "Threads"); returns when it is done.

    Args:
      work_images: ``[B, S, S, C]`` uint8, ``S = work_size``, ``C =`` :attr:`channels`: each
        face's crop box at the working resolution (:func:`working_crop`).

    Returns:
      The device-side :class:`dff_jax.alignment.cascade.AlignmentResult` (computed); pass it
      to :meth:`fetch`. The function is compiled on the first batch of each size.
    """
    work_images = np.asarray(work_images)
    shape = (self.work_size, self.work_size, self.channels)
    if work_images.ndim != 4 or work_images.shape[1:] != shape or work_images.dtype != np.uint8:
      raise ValueError(f"expected [B, {', '.join(map(str, shape))}] uint8 working images "
                       f"(working_crop(..., channels={self.channels})), got {work_images.shape} "
                       f"{work_images.dtype}")
    batch_size = work_images.shape[0]
    self.compile(batch_size)
    with EXECUTION_LOCK:
      return jax.block_until_ready(self._compiled[batch_size](
          self.describer.params, self.alignment_model, self.params, jnp.asarray(work_images)))

  @staticmethod
  def fetch(result: Any) -> Dict[str, np.ndarray]:
    """A :meth:`dispatch` result's fields as NumPy arrays (working frame; ``None`` stays
    ``None``: the agreement of a cascade without a template)."""
    return {k: None if v is None else np.asarray(v)
            for k, v in dataclasses.asdict(jax.device_get(result)).items()}

  def align_working(self, work_images: np.ndarray) -> Dict[str, np.ndarray]:
    """The jitted cascade on one batch of working images (:meth:`dispatch` + :meth:`fetch`).

    Args:
      work_images: ``[B, S, S, C]`` uint8, ``S = work_size``, ``C =`` :attr:`channels`.

    Returns:
      :class:`dff_jax.alignment.cascade.AlignmentResult` fields as NumPy arrays (working frame).
    """
    return self.fetch(self.dispatch(work_images))

  def save_derived(self, out_path: str | os.PathLike,
                   params: Optional[cascade.CascadeParams] = None, **meta: Any) -> Path:
    """Writes a cascade file made from this one (calibrated, refined): ``params`` (default its
    own), its settings, its meta updated with ``meta``, in the loaded file's precision (float16
    weights if it had them). A DFF cascade names the same encoder by absolute path
    (``descriptor_source``), so the new file loads from anywhere."""
    meta = dict(self.meta, **meta)
    if self.describer.kind == "dff":
      meta["descriptor_source"] = str(Path(self.describer.source).resolve())
      meta.pop("encoder_bundle", None)
    with np.load(self.spec.cascade_path, allow_pickle=False) as stored:
      compact = any(stored[name].dtype == np.float16 for name in stored.files)
    return cascade_io.save_cascade(out_path, self.params if params is None else params,
                                   self.config, meta, compact=compact)


_ALIGNER_CACHE: Dict[Tuple, CompiledCascade] = {}
_ALIGNER_CACHE_SIZE = 2


def _file_stamp(path: Optional[Path]) -> Tuple:
  if path is None or not path.exists():
    return (str(path),)
  stat = path.stat()
  return (str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def load_aligner(spec: AlignerSpec, cache: bool = True) -> CompiledCascade:
  """Loads everything :func:`resolve_aligner` found into a :class:`CompiledCascade`.

  The last two aligners are cached in the process (keyed by the files' paths, sizes and
  modification times), so repeated calls reuse the compiled cascade.

  Raises:
    ValueError: unreadable files, or a cascade whose descriptor size differs from the encoder's.
  """
  key = (spec.features, _file_stamp(spec.cascade_path), _file_stamp(spec.checkpoint),
         spec.face_model, spec.mirror, spec.fit_modes, spec.matmul_dtype)
  if cache and key in _ALIGNER_CACHE:
    return _ALIGNER_CACHE[key]
  aligner = _load_aligner(spec)
  if cache:
    while len(_ALIGNER_CACHE) >= _ALIGNER_CACHE_SIZE:
      _ALIGNER_CACHE.pop(next(iter(_ALIGNER_CACHE)))
    _ALIGNER_CACHE[key] = aligner
  return aligner


def _load_aligner(spec: AlignerSpec) -> CompiledCascade:
  from dff_jax.face_model import load_face_model  # pylint: disable=g-import-not-at-top
  params, config, meta = cascade_io.load_cascade(spec.cascade_path)
  describer = features_lib.make_describer(spec.features, spec.checkpoint, spec.matmul_dtype)
  if describer.descriptor_dim != params.descriptor_dim:
    raise ValueError(f"cascade {spec.cascade_path} expects {params.descriptor_dim}-d descriptors "
                     f"but {describer.source} gives {describer.descriptor_dim}-d ones: pass the "
                     "--checkpoint the cascade was trained with")
  model = load_face_model(spec.face_model)
  return CompiledCascade(spec=spec, describer=describer, face_model=model,
                 alignment_model=cascade.alignment_model_for(model, meta, spec.fit_modes),
                 params=params,
                 config=config, meta=meta, work_size=WORK_SCALE * config.crop_size)


# ----------------------------------------------------------------------------------------------
# Host-side crops
# ----------------------------------------------------------------------------------------------


def whole_image_box(height: int, width: int, box_scale: float) -> np.ndarray:
  """``[4]`` face box of :data:`WHOLE_IMAGE`: its crop box is the square around the whole image."""
  side = max(height, width) / box_scale
  cx, cy = width / 2.0, height / 2.0
  return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)


def check_box(box: Any, height: int, width: int, where: str = "",
              min_inside: float = 0.0) -> np.ndarray:
  """Validates a face box against its image; returns it as ``[4]`` float32.

  Raises:
    ValueError: not 4 finite numbers, ``x1 <= x0`` or ``y1 <= y0``, smaller than 2 px, not
      overlapping the ``width x height`` image, or with less than ``min_inside`` of its area
      inside it (given boxes: :data:`dff_jax.geometry.MIN_BOX_INSIDE`).
  """
  prefix = f"{where}: " if where else ""
  try:
    values = np.asarray(box, np.float64).reshape(-1)
  except (TypeError, ValueError):
    raise ValueError(f"{prefix}face box {box!r} is not 4 numbers [x0, y0, x1, y1]") from None
  if values.shape != (4,) or not np.all(np.isfinite(values)):
    raise ValueError(f"{prefix}face box {box!r} must be 4 finite numbers [x0, y0, x1, y1]")
  x0, y0, x1, y1 = values
  if x1 - x0 < 2 or y1 - y0 < 2:
    raise ValueError(f"{prefix}face box {values.tolist()} is empty or inverted (need x1 > x0 "
                     "and y1 > y0, at least 2 px)")
  if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
    raise ValueError(f"{prefix}face box {values.tolist()} lies outside the {width}x{height} image")
  inside = float(geometry.fraction_inside(values, height, width))
  if inside < min_inside:
    raise ValueError(f"{prefix}face box {values.tolist()} lies mostly outside the {width}x{height} "
                     f"image ({100 * inside:.2g} % of it inside, at least {100 * min_inside:g} % "
                     "needed): give a box around a face in the image")
  return values.astype(np.float32)


# The largest crop box side (image pixels) cut from the image as it is; larger ones are cut
# from the image reduced by an integer factor (:func:`working_crop`).
MAX_CROP_SIDE = 4096


def working_crop(image: np.ndarray, box_xyxy: np.ndarray, config: cascade.CascadeConfig,
                 work_size: int, channels: int = 3) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Cuts a face's crop box out of the image at the working resolution (host, Pillow).

  Args:
    image: ``[H, W, 3]`` uint8 RGB, or ``[H, W, 1]`` uint8 grey (BT.601 luma).
    box_xyxy: ``[4]`` face box, image pixels.
    config: the cascade settings (``box_scale``).
    work_size: side of the working image.
    channels: 3 (RGB; a grey image is replicated) or 1 (BT.601 luma: an RGB image's region is
      converted before it is resampled, :func:`dff_jax.image_io.rgb_to_grey`).

  Returns:
    ``(work_image [S, S, channels] uint8, crop_box [4] float64 image pixels, work_box [4]
    float32)``: the crop box resampled (antialiased bilinear, black outside the image; a crop
    box of side over :data:`MAX_CROP_SIDE` from the image first reduced by an integer factor),
    the square crop box, and the face box in working-image pixels.
  """
  if channels not in (1, 3):
    raise ValueError(f"working_crop: channels must be 1 or 3, got {channels}")
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] not in (1, 3) or image.dtype != np.uint8:
    raise ValueError(f"working_crop: expected an [H, W, 3] or [H, W, 1] uint8 image, got "
                     f"{image.shape} {image.dtype}")
  box = np.asarray(box_xyxy, np.float64)
  crop_box = np.asarray(geometry.square_box(box, config.box_scale), np.float64)
  pixels = image[..., 0] if image.shape[-1] == 1 else image
  picture = Image.fromarray(np.ascontiguousarray(pixels))
  x0, y0, x1, y1 = crop_box
  side = max(x1 - x0, 1.0)
  if side > MAX_CROP_SIDE:
    # A huge crop box (a whole panorama, a box far larger than a face): reduce the image by
    # the integer factor that brings the crop within MAX_CROP_SIDE first (each reduced pixel the
    # mean of a block; image point p maps to p / factor), instead of cutting a region of
    # hundreds of megapixels.
    factor = int(math.ceil(side / MAX_CROP_SIDE))
    picture = picture.reduce(factor)
    x0, y0, x1, y1 = crop_box / factor
  ix0, iy0 = int(math.floor(x0)), int(math.floor(y0))
  ix1, iy1 = max(int(math.ceil(x1)), ix0 + 1), max(int(math.ceil(y1)), iy0 + 1)
  region = picture.crop((ix0, iy0, ix1, iy1))
  if channels == 1 and region.mode == "RGB":
    region = region.convert("L")  # = image_io.rgb_to_grey (Pillow's BT.601 fixed point)
  work = np.asarray(region.resize((work_size, work_size), Image.BILINEAR,
                                  box=(x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0)), np.uint8)
  if work.ndim == 2:
    work = work[..., None]
  if work.shape[-1] != channels:
    work = np.repeat(work, channels, axis=-1)
  work_box = geometry.image_to_crop(box.reshape(2, 2), crop_box, work_size).reshape(4)
  return np.ascontiguousarray(work), crop_box, work_box.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# One face's result
# ----------------------------------------------------------------------------------------------


Face = results.Face  # one face's alignment, image pixels (see dff_jax.alignment.results)


def to_image_frame(result: Dict[str, np.ndarray], index: int, crop_box: np.ndarray,
                   box: np.ndarray, work_size: int, score: Optional[float] = None) -> Face:
  """Face ``index`` of a working-frame batch result mapped back to image pixels (``score``: the
  detector's, ``None`` for a given box)."""
  factor = (crop_box[2] - crop_box[0]) / work_size
  origin = crop_box[:2]
  pose = results.Pose(
      yaw_rad=float(result["yaw_rad"][index]), pitch_rad=float(result["pitch_rad"][index]),
      roll_rad=float(result["roll_rad"][index]), scale=float(result["scale"][index] * factor),
      translation_px=(result["translation_px"][index] * factor + origin).astype(np.float32))
  return Face(
      landmarks_px=(result["landmarks_px"][index] * factor + origin).astype(np.float32),
      landmarks_3d_px=(result["landmarks_3d_px"][index] * factor + origin).astype(np.float32),
      visibility=result["visibility"][index] > 0.5, pose=pose,
      shape_coefficients=result["shape_coefficients"][index].astype(np.float32),
      expression_coefficients=result["expression_coefficients"][index].astype(np.float32),
      box=np.asarray(box, np.float32), score=None if score is None else float(score),
      crop_box=np.asarray(crop_box, np.float32),
      agreement=(None if result.get("agreement") is None
                 else float(result["agreement"][index])),
      landmark_agreement=(None if result.get("landmark_agreement") is None
                          else result["landmark_agreement"][index].astype(np.float32)))


# ----------------------------------------------------------------------------------------------
# Face boxes of one image
# ----------------------------------------------------------------------------------------------


def face_boxes(image: np.ndarray, box: Any, box_scale: float, where: str = "",
               scores: Optional[Sequence[float]] = None,
               detect: Optional[Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]] = None
               ) -> Tuple[np.ndarray, List[Optional[float]]]:
  """The face boxes of one image (see :class:`dff_jax.alignment.streaming.Loaded` for
  ``box``) and their scores.

  Args:
    image: ``[H, W, 3]`` uint8 (or ``[H, W, 1]`` grey, replicated for the detector).
    box: ``[4]``, ``[N, 4]``, ``None`` / :data:`DETECT` or :data:`WHOLE_IMAGE`.
    box_scale: the cascade's ``box_scale`` (for the whole-image box).
    where: prefix of error messages (the image's name).
    scores: optional ``[N]`` scores of given boxes.
    detect: ``image -> (boxes [N, 4], scores [N])`` (default
      :func:`dff_jax.detection.detect_faces`).

  Returns:
    ``(boxes [N, 4] float32, scores [N] floats or None)``; given boxes are checked
    (:func:`check_box`, at least :data:`dff_jax.geometry.MIN_BOX_INSIDE` of each inside the
    image).

  Raises:
    ValueError: a bad box, an unknown word, or ``scores`` of another length.
  """
  height, width = image.shape[:2]
  if asks_detection(box):
    if detect is None:
      from dff_jax import detection  # pylint: disable=g-import-not-at-top
      detect = detection.detect_faces
    found, found_scores = detect(image if image.shape[-1] == 3 else np.repeat(image, 3, -1))
    found = np.asarray(found, np.float32).reshape(-1, 4)
    return found, [float(v) for v in np.asarray(found_scores).reshape(-1)]
  if isinstance(box, str):
    if box != WHOLE_IMAGE:
      raise ValueError(f"{where + ': ' if where else ''}unknown face box {box!r}: give "
                       f"[x0, y0, x1, y1], a list of them, {DETECT!r} or {WHOLE_IMAGE!r}")
    return whole_image_box(height, width, box_scale)[None], [None]
  try:
    array = np.asarray(box, np.float64)
  except (TypeError, ValueError):
    raise ValueError(f"{where + ': ' if where else ''}face box {box!r} is not [x0, y0, x1, y1] "
                     "or a list of them") from None
  if array.size == 0:  # an empty list: no face in this image
    boxes = []
  elif array.ndim == 2 and array.shape[1] == 4:
    boxes = [check_box(b, height, width, where, geometry.MIN_BOX_INSIDE) for b in array]
  else:  # one box (check_box says what is wrong with anything else)
    boxes = [check_box(box, height, width, where, geometry.MIN_BOX_INSIDE)]
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  if scores is None:
    return boxes, [None] * len(boxes)
  scores = [None if v is None else float(v) for v in scores]
  if len(scores) != len(boxes):
    raise ValueError(f"{where + ': ' if where else ''}{len(scores)} scores for {len(boxes)} "
                     "face boxes")
  return boxes, scores
