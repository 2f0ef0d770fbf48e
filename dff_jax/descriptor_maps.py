"""DFF descriptor maps of square image regions: loading an encoder bundle, the region of a face
box, antialiased crops, the map of a region and its ``.npy`` + ``.json`` files.

The library side of ``experiments.extract_features`` (the map files), ``experiments.show_features``
and ``experiments.eval_matching``. Frames: image points ``(x, y)`` in pixels, pixel ``(i, j)``
centred at ``(j + 0.5, i + 0.5)``; a region is a square ``(x0, y0, x1, y1)`` in image pixels and
map entry ``[i, j]`` describes the image point ``(x0 + (j + 0.5) * side / S, y0 + (i + 0.5) *
side / S)``, ``side = x1 - x0`` (:func:`dff_jax.geometry.crop_to_image`). Importing this module
does not import JAX (:func:`load_dff` does).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from dff_jax.file_io import write_json_atomic
from dff_jax.file_io import write_npy_atomic

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "dff_default"
DEFAULT_BOX_SCALE = 1.8
FILL_VALUE = 127.5


def resolve_checkpoint(checkpoint: Optional[str | os.PathLike]) -> Path:
  """The DFF checkpoint to use: ``checkpoint`` or the shipped default.

  Raises:
    FileNotFoundError: one-line message when it does not exist.
  """
  if not checkpoint:
    if not DEFAULT_CHECKPOINT.exists():
      raise FileNotFoundError(
          f"no --checkpoint given and the shipped default DFF bundle {DEFAULT_CHECKPOINT} is "
          "missing; pass --checkpoint=DIR (an inference bundle or a training workdir)")
    return DEFAULT_CHECKPOINT
  path = Path(checkpoint)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint {path} does not exist; pass --checkpoint=DIR with an "
                            "inference bundle or a training workdir")
  return path


@dataclasses.dataclass(frozen=True)
class DFFModel:
  """A loaded DFF encoder.

  Attributes:
    describe: jitted ``crops [B, S, S, 3] float32 RGB in [0, 255] -> [B, S, S, D] float32``
      unit-norm descriptors, pixel ``[i, j]`` of the crop.
    image_size: ``S``, the encoder's training image size (crops are made this size).
    descriptor_dim: ``D``.
    source: the checkpoint path.
    meta: the bundle's config dict (``dff_jax.checkpoint.load_encoder_params``).
  """
  describe: Callable[[Any], Any]
  image_size: int
  descriptor_dim: int
  source: str
  meta: dict


def load_dff(checkpoint: Optional[str | os.PathLike] = None) -> DFFModel:
  """Loads the DFF encoder of ``checkpoint`` (default: the shipped bundle, see
  :func:`resolve_checkpoint`)."""
  path = resolve_checkpoint(checkpoint)
  import jax  # pylint: disable=g-import-not-at-top  (keep --help and input errors fast)
  from dff_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from dff_jax import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
  module, params, meta = checkpoint_lib.load_inference_bundle(path)
  channels = int(meta.get("channels", 1))

  @jax.jit
  def describe(crops):
    return module.apply({"params": params}, encoder_lib.preprocess_images(crops, channels),
                        method="dense")

  return DFFModel(describe=describe, image_size=int(meta["image_size"]),
                  descriptor_dim=int(module.descriptor_dim), source=str(path), meta=meta)


def parse_bbox(text: Optional[str]) -> Optional[np.ndarray]:
  """``"x0,y0,x1,y1"`` -> ``[4]`` float32 (None for None / empty).

  Raises:
    ValueError: not four numbers, or not ``x1 > x0`` and ``y1 > y0``.
  """
  if text is None or not str(text).strip():
    return None
  try:
    values = np.asarray([float(v) for v in str(text).split(",")], np.float32)
  except ValueError:
    values = np.zeros(0)
  if values.shape != (4,) or not np.all(np.isfinite(values)):
    raise ValueError(f"--bbox must be four numbers x0,y0,x1,y1 in pixels, got {text!r}")
  if not (values[2] > values[0] and values[3] > values[1]):
    raise ValueError(f"--bbox {text!r} must have x1 > x0 and y1 > y0")
  return values


def crop_box_for(image_shape: Sequence[int], bbox: Optional[np.ndarray],
                 box_scale: float = DEFAULT_BOX_SCALE) -> np.ndarray:
  """The square image region ``[4]`` ``(x0, y0, x1, y1)`` a descriptor map covers.

  Args:
    image_shape: ``(H, W, ...)`` of the image.
    bbox: ``[4]`` face box in image pixels, or None for the whole image.
    box_scale: side multiplier of the face box (ignored for the whole image).

  Returns:
    ``[4]`` float32 square box: ``square_box(bbox, box_scale)``, or the square of side
    ``max(W, H)`` centred on the image.

  Raises:
    ValueError: ``box_scale <= 0``, or a ``bbox`` with less than
      :data:`dff_jax.geometry.MIN_BOX_INSIDE` of its area inside the image.
  """
  from dff_jax import geometry  # pylint: disable=g-import-not-at-top  (NumPy only)
  if box_scale <= 0:
    raise ValueError(f"box_scale must be > 0, got {box_scale}")
  if bbox is None:
    height, width = int(image_shape[0]), int(image_shape[1])
    return np.asarray(geometry.square_box(np.asarray([0, 0, width, height], np.float32), 1.0),
                      np.float32)
  height, width = int(image_shape[0]), int(image_shape[1])
  inside = float(geometry.fraction_inside(np.asarray(bbox, np.float64), height, width))
  if inside < geometry.MIN_BOX_INSIDE:
    raise ValueError(f"--bbox {np.asarray(bbox).tolist()} lies {'mostly ' * (inside > 0)}outside "
                     f"the {width}x{height} image ({100 * inside:.2g} % of it inside, at least "
                     f"{100 * geometry.MIN_BOX_INSIDE:g} % needed): give a box around a face in "
                     "the image")
  return np.asarray(geometry.square_box(np.asarray(bbox, np.float32), float(box_scale)),
                    np.float32)


# The most samples per crop pixel and axis; a larger region is first reduced by an integer
# factor (area averaging), so memory stays bounded whatever the image size.
MAX_SUPERSAMPLE = 8


def crop(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
  """``[size, size, 3]`` float32 crop in [0, 255] of ``image [H, W, 3] uint8`` over the square
  ``box``, antialiased, mid-grey outside the image (:func:`dff_jax.sampling.crop_image`, with
  ``ceil(side / size)`` samples per pixel and axis; a region more than
  :data:`MAX_SUPERSAMPLE` times the crop is first reduced by the integer factor that brings it
  within, each reduced pixel the mean of a block)."""
  from dff_jax import sampling  # pylint: disable=g-import-not-at-top
  box = np.asarray(box, np.float64)
  side = float(box[2] - box[0])
  supersample = max(1, int(math.ceil(side / size - 1e-6)))
  if supersample > MAX_SUPERSAMPLE:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    factor = int(math.ceil(supersample / MAX_SUPERSAMPLE))
    reduced = Image.fromarray(np.ascontiguousarray(image)).reduce(factor)
    # The reduced pixel (i, j) is the block [j * f, (j + 1) * f) x [i * f, (i + 1) * f) (a block
    # cut by the border averages what it holds): image point p maps to p / f.
    image, box = np.asarray(reduced), box / factor
    supersample = max(1, int(math.ceil((side / factor) / size - 1e-6)))
  return np.asarray(sampling.crop_image(np.asarray(image, np.float32), box, size,
                                        supersample=supersample, fill_value=FILL_VALUE))


def read_image(path: str | os.PathLike) -> np.ndarray:
  """``[H, W, 3]`` uint8 RGB (``dff_jax.image_io.read_image``; one-line ``ValueError``s)."""
  from dff_jax import image_io  # pylint: disable=g-import-not-at-top
  return image_io.read_image(path)


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
  """Atomic PNG (``dff_jax.image_io.write_png_atomic``), creating the folder."""
  from dff_jax import image_io  # pylint: disable=g-import-not-at-top
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  return image_io.write_png_atomic(path, image)


def check_input_file(path: Optional[str | os.PathLike], flag: str) -> Path:
  """Raises a one-line ``FileNotFoundError`` if ``--flag`` is unset or not an existing file."""
  if not path:
    raise FileNotFoundError(f"--{flag} is required")
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"--{flag}: {path} does not exist or is not a file")
  return path


def describe_region(model: DFFModel, image: np.ndarray, box: np.ndarray) -> np.ndarray:
  """``[S, S, D]`` float32 descriptors of the square ``box`` of ``image [H, W, 3] uint8``."""
  crops = crop(image, box, model.image_size)[None]
  return np.asarray(model.describe(crops))[0]


def extract_features(image_path: str | os.PathLike, out_path: str | os.PathLike,
                     bbox: Optional[np.ndarray] = None, checkpoint: Optional[str] = None,
                     box_scale: float = DEFAULT_BOX_SCALE,
                     model: Optional[DFFModel] = None) -> dict:
  """``experiments.extract_features``: writes ``out_path`` (``[S, S, D]`` float32 .npy) and
  ``out_path`` with ``.json`` (the layout is in that command's docstring).

  Args:
    image_path: the image file.
    out_path: the ``.npy`` to write (its ``.json`` goes beside it).
    bbox: optional ``[4]`` face box ``(x0, y0, x1, y1)`` in image pixels.
    checkpoint: DFF bundle / workdir (default: shipped).
    box_scale: face-box margin (see the module docstring).
    model: an already loaded :class:`DFFModel` (then ``checkpoint`` is ignored).

  Returns:
    the JSON document written.
  """
  image_path = check_input_file(image_path, "image")
  out_path = Path(out_path)
  if out_path.suffix != ".npy":
    raise ValueError(f"--out must name a .npy file, got {out_path}")
  image = read_image(image_path)
  box = crop_box_for(image.shape, bbox, box_scale)
  if model is None:
    model = load_dff(checkpoint)
  descriptors = describe_region(model, image, box).astype(np.float32)
  document = dict(
      image=str(image_path),
      image_size_wh=[int(image.shape[1]), int(image.shape[0])],
      box=[float(v) for v in box],
      bbox=None if bbox is None else [float(v) for v in bbox],
      box_scale=float(box_scale) if bbox is not None else None,
      shape=list(descriptors.shape),
      descriptor_dim=int(descriptors.shape[-1]),
      checkpoint=model.source,
      convention=("box [x0, y0, x1, y1] in image pixels, pixel (i, j) centred at (j + 0.5, "
                  "i + 0.5); map entry [i, j] describes image point (x0 + (j + 0.5) * side / S, "
                  "y0 + (i + 0.5) * side / S), side = x1 - x0, S = shape[0]"),
  )
  write_npy_atomic(out_path, descriptors)
  write_json_atomic(out_path.with_suffix(".json"), document)
  return document
