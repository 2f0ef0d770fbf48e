"""Descriptor maps for the cascade: the DFF encoder or dense SIFT, behind one signature.

A ``Describer`` maps face crops ``[B, crop, crop, 3]`` float32 in [0, 255] (RGB, the output of
:func:`dff_jax.sampling.crop_image`; or ``[B, crop, crop, 1]`` BT.601 luma when its
``channels`` is 1) to unit-norm descriptor maps ``[B, crop, crop, D]`` in the same pixel frame. It is a pure function of its inputs (parameters are closed over), so it can be
jitted, vmapped and differentiated together with the cascade.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

from dff_jax import convolution
from dff_jax import descriptor_fields
from dff_jax import encoder as encoder_lib
from dff_jax import sift

Array = Any
ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_DFF_BUNDLE = ASSETS / "dff_default"
FEATURE_KINDS = ("dff", "sift")


@dataclasses.dataclass(frozen=True)
class Describer:
  """A descriptor function and what it is.

  Attributes:
    kind: ``"dff"`` or ``"sift"``.
    descriptor_dim: D.
    apply: ``(params, crops [B, S, S, 3] float32 in [0, 255]) -> descriptor fields [B, ...]``
      (dense maps ``[B, S, S, D]``, or point fields: :mod:`dff_jax.descriptor_fields`); crops
      may also be grey, ``[B, S, S, 1]`` BT.601 luma.
    params: the pytree ``apply`` differentiates through (encoder parameters; ``None`` for SIFT).
    source: where the parameters came from (a path, or "dense SIFT").
    channels: the colour channels the descriptor reads: 1 (it sees only the luma, so grey
      crops give the same descriptors as RGB ones, and a grey decode is enough) or 3.
  """
  kind: str
  descriptor_dim: int
  apply: Callable[[Any, Array], Array]
  params: Any
  source: str
  channels: int = 3

  def __call__(self, crops: Array) -> Array:
    return self.apply(self.params, crops)

  def dense(self, crops: Array) -> Array:
    """``[B, S, S, D]`` dense maps of the crops (a point field read at every pixel centre)."""
    return descriptor_fields.to_dense_batch(self(crops))


def dff_describer(checkpoint: Optional[str | Path] = None, conv: Optional[str] = None,
                  matmul_dtype: Optional[str] = None) -> Describer:
  """The DFF encoder from an inference bundle or training workdir (default: the shipped one).

  ``conv``: how its 3x3 convolutions are computed (``"auto"``, ``"xla"``, ``"winograd"``,
  ``"matmul"``: :func:`dff_jax.convolution.conv3x3_algorithm`; the same descriptors to float32
  rounding); ``matmul_dtype``: the operand dtype of its matrix products (``"float32"`` or
  ``"bfloat16"``: :class:`dff_jax.encoder.DFFEncoder`); ``None`` keeps the bundle's
  configuration (``"auto"``, float32, unless it names others).

  Raises:
    FileNotFoundError / ValueError: with a readable message when the checkpoint is missing,
      corrupt or of another configuration (see :mod:`dff_jax.checkpoint`).
  """
  from dff_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  path = Path(checkpoint) if checkpoint else DEFAULT_DFF_BUNDLE
  if not path.exists():
    hint = ("the shipped default is missing from this install" if checkpoint is None
            else "pass --checkpoint=DIR with a training workdir or an exported bundle")
    raise FileNotFoundError(f"DFF checkpoint {path} does not exist: {hint}")
  module, params, meta = checkpoint_lib.load_inference_bundle(path)
  overrides = {k: v for k, v in (("conv", conv), ("matmul_dtype", matmul_dtype))
               if v is not None}
  if overrides:
    module = module.clone(**overrides)
    module._check_fields()  # pylint: disable=protected-access  # A bad name, said here.
  channels = int(meta.get("channels", 1))

  def apply(params, crops):
    return module.apply({"params": params}, encoder_lib.preprocess_images(crops, channels))

  return Describer(kind="dff", descriptor_dim=int(module.descriptor_dim), apply=apply,
                   params=params, source=str(path), channels=channels)


def sift_describer(cell_px: int = 4) -> Describer:
  """Dense upright SIFT at one fixed scale (:func:`dff_jax.sift.dense_sift`)."""
  return Describer(kind="sift", descriptor_dim=sift.DESCRIPTOR_DIM,
                   apply=lambda _, crops: sift.dense_sift(crops, cell_px=cell_px), params=None,
                   source=f"dense SIFT, cell {cell_px} px", channels=1)


def named_encoder(cascade_path: str | Path, meta: dict) -> Optional[Path]:
  """The DFF encoder a cascade file names: ``meta["encoder_bundle"]``, a folder relative to the
  cascade file (the shipped ``cascade_dff.npz`` names ``dff_point_aligned``,
  ``cascade_dff_synthetic.npz`` names ``dff_aligned``), else the encoder it was trained on,
  ``meta["descriptor_source"]`` (a cascade of a training run); ``None`` when it names none.
  The folder may not exist (a moved file, a workdir cleaned up)."""
  name = meta.get("encoder_bundle")
  if name:
    return Path(cascade_path).parent / name
  source = meta.get("descriptor_source")
  return Path(str(source)) if source else None


def encoder_for_cascade(cascade_path: str | Path, meta: dict) -> Path:
  """The DFF bundle a cascade was trained with, when no checkpoint is given: the encoder it
  names (:func:`named_encoder`; its ``descriptor_source`` only when that folder exists: its
  regressors only make sense on those descriptors), else the shipped ``dff_default`` bundle.
  """
  named = named_encoder(cascade_path, meta)
  if named is not None and (meta.get("encoder_bundle") or named.is_dir()):
    return named
  return DEFAULT_DFF_BUNDLE


def same_encoder(first: str | Path, second: str | Path) -> bool:
  """Whether two DFF checkpoints (bundles or training workdirs) hold the same encoder: one
  folder, or equal parameter files (bundles), or equal parameter arrays after loading."""
  first, second = Path(first), Path(second)
  if first.resolve() == second.resolve():
    return True
  from dff_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  files = [path / checkpoint_lib.BUNDLE_PARAMS_FILE for path in (first, second)]
  if all(f.is_file() for f in files) and files[0].read_bytes() == files[1].read_bytes():
    return True
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  leaves = []
  for path in (first, second):
    params, _ = checkpoint_lib.load_encoder_params(path)
    leaves.append(jax.tree_util.tree_flatten_with_path(params)[0])
  return (len(leaves[0]) == len(leaves[1])
          and all(ka == kb and np.shape(a) == np.shape(b) and np.array_equal(a, b)
                  for (ka, a), (kb, b) in zip(*leaves)))


def checked_matmul_dtype(matmul_dtype: str, kind: str = "dff") -> str:
  """``matmul_dtype`` (``--matmul_dtype``) if it names an operand dtype of the DFF encoder's
  matrix products (:data:`dff_jax.convolution.OPERAND_DTYPES`) and the descriptors are DFF's.

  Raises:
    ValueError: another name, or a descriptor (SIFT) without such products; the message says
      which values work.
  """
  if matmul_dtype not in convolution.OPERAND_DTYPES:
    raise ValueError(f"--matmul_dtype={matmul_dtype!r} is not one of "
                     f"{', '.join(convolution.OPERAND_DTYPES)} (leave it out for the "
                     "encoder's own)")
  if kind != "dff" and matmul_dtype != "float32":
    raise ValueError(f"--matmul_dtype={matmul_dtype} applies to DFF descriptors only, and these "
                     f"are {kind}: drop it")
  return matmul_dtype


def make_describer(kind: str, checkpoint: Optional[str | Path] = None,
                   matmul_dtype: Optional[str] = None) -> Describer:
  """``"dff"`` (with an optional checkpoint and matrix-product operand dtype,
  :func:`dff_describer`) or ``"sift"``."""
  if matmul_dtype is not None:
    checked_matmul_dtype(matmul_dtype, kind)
  if kind == "dff":
    return dff_describer(checkpoint, matmul_dtype=matmul_dtype)
  if kind == "sift":
    return sift_describer()
  raise ValueError(f"unknown features {kind!r}: use one of {FEATURE_KINDS}")


def describer_for_cascade(cascade_path: str | Path, meta: dict,
                          checkpoint: Optional[str | Path] = None) -> Describer:
  """The descriptor a cascade file was trained on: its ``features``, and for DFF ``checkpoint``
  or else the encoder the cascade names (:func:`encoder_for_cascade`)."""
  kind = str(meta.get("features", "dff"))
  if kind == "dff" and not checkpoint:
    checkpoint = encoder_for_cascade(cascade_path, meta)
  return make_describer(kind, checkpoint)
