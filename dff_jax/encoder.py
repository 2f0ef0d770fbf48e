"""The Deep Face Feature (DFF) network: image -> one unit-norm descriptor per pixel.

The paper (see ``../shared/paper.md``) gives the output (a 64-D, L2-normalised descriptor per
pixel at full input resolution) but not the backbone. We use the natural choice of the time for
dense correspondence: a U-Net-like encoder-decoder with skip connections, NHWC, 3x3 convolutions.

Layout (``depth = len(features)`` levels, stride ``2 ** (depth - 1)``)::

  level 0 (H x W)          : convs_per_level x [conv3x3 -> norm -> act]  ------------- skip 0
  level l (H/2^l x W/2^l)  : 2x2 max pool, convs_per_level x [...]        ------------- skip l
  ...
  decoder, l = depth-2..0  : upsample(level l+1 -> level l), concat skip l,
                             convs_per_level x [conv3x3 -> norm -> act]
                             (no activation after the very last norm)
  head                     : conv1x1 -> D (float32), L2 normalise over D (float32)

Upsampling choices (``upsample``):

* ``"bilinear"`` / ``"nearest"``: a 1x1 convolution to ``features[l]`` at the *coarse* level,
  then a 2x resize. The resize is linear and acts per channel, so this is exactly "resize, then
  1x1 conv" at a quarter of the cost.
* ``"transpose"``: a 2x2, stride-2 transposed convolution.

Normalisation is GroupNorm by default: batch independent (same result sharded or not, at any
batch size, in training and inference) and stateless, so there is no BatchNorm state to carry.

Inputs are ``[B, H, W, C]`` float images (``C = 1`` grey as in the paper, or 3) already
normalised, e.g. by :func:`preprocess_images`; the module is agnostic to ``C``.

Cost (XLA cost analysis; ``python -m experiments.benchmark --what=encoder``): the ``"cpu"``
preset needs 3.6 GFLOP per 128 x 128 image forward and 10.7 GFLOP forward + backward; the
``"paper"`` preset 54 and 162 GFLOP per 224 x 224 image. On CPU, per-image throughput is best at
small batches (4-8): the activations of larger batches no longer fit in cache.

Length: about 560 lines: both encoder architectures (the U-Net and the point-head variant,
which shares its contracting half, parameter names included) with their shared blocks (GroupNorm,
the conv block; the 3x3 convolution itself is :mod:`dff_jax.convolution`), preprocessing and
config parsing; splitting them would separate the trunk from its two heads.

Presets (see :data:`PRESETS`): ``"tiny"`` for tests, ``"cpu"`` (features (32, 64, 96, 128) at
128 x 128) and ``"paper"`` (features (64, 128, 256, 512) at 224 x 224 grey; our choice of width,
since the paper's backbone is unknown).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dff_jax import convolution
from dff_jax import descriptor_fields
from dff_jax import image_io

Array = Any

# ITU-R BT.601 luma weights (R, G, B).
BT601_WEIGHTS = image_io.BT601_WEIGHTS  # ITU-R BT.601 luma weights of (R, G, B)
# preprocess_images maps [0, 255] to (x / 255 - PIXEL_MEAN) / PIXEL_STD, roughly zero mean and
# unit variance for face crops.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.25

_ACTIVATIONS: Mapping[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "leaky_relu": lambda x: nn.leaky_relu(x, negative_slope=0.1),
}
_NORMS = ("group", "layer", "none")
_UPSAMPLES = ("bilinear", "nearest", "transpose")
_DOWNSAMPLES = ("max_pool", "strided_conv")
_HEADS = ("dense", "point")

# Named configurations: keyword arguments of DFFEncoder plus the input size they are meant for.
PRESETS: Mapping[str, Mapping[str, Any]] = {
    "tiny": dict(features=(8, 16), descriptor_dim=8, convs_per_level=1, image_size=16,
                 channels=1),
    "cpu": dict(features=(32, 64, 96, 128), descriptor_dim=64, convs_per_level=2,
                image_size=128, channels=1),
    "paper": dict(features=(64, 128, 256, 512), descriptor_dim=64, convs_per_level=2,
                  image_size=224, channels=1),
  # The shipped encoders' widths (experiments/configs/dff_cpu.py) and its point-head variant
  # (experiments/configs/dff_point.py).
  "dff": dict(features=(16, 32, 64, 128), descriptor_dim=64, convs_per_level=2, image_size=128,
              channels=1),
  "dff_point": dict(features=(16, 32, 64, 128), descriptor_dim=64, convs_per_level=2,
                    image_size=128, channels=1, head="point", head_hidden=128),
}


# One implementation, shared with the point head (``dff_jax.descriptor_fields``).
l2_normalize = descriptor_fields.l2_normalize


def stride_of(features: Sequence[int]) -> int:
  """The factor ``2 ** (len(features) - 1)`` that input height and width must be divisible by."""
  return 2 ** (len(features) - 1)


def encoder_stride(config: Any) -> int:
  """Stride of an encoder given as a :class:`DFFEncoder`, a config (mapping / ConfigDict with a
  ``features`` field, possibly under ``.encoder`` / ``["encoder"]``) or a ``features`` sequence."""
  features = _field(config, "features", None)
  if features is None:
    encoder_config = _field(config, "encoder", None)
    if encoder_config is not None:
      features = _field(encoder_config, "features", None)
  if features is None:
    features = config
  return stride_of(tuple(features))


def _nearest_multiples(size: int, stride: int) -> Tuple[int, ...]:
  below = (size // stride) * stride
  above = below + stride
  return tuple(s for s in (below, above) if s > 0)


def check_image_size(height: int, width: int, stride: int) -> None:
  """Raises ``ValueError`` naming sizes that work unless ``height`` and ``width`` divide by
  ``stride``."""
  bad = [(name, size) for name, size in (("height", height), ("width", width))
         if size <= 0 or size % stride]
  if bad:
    hints = "; ".join(
        f"{name} {size} -> try {' or '.join(map(str, _nearest_multiples(size, stride)))}"
        for name, size in bad)
    raise ValueError(
        f"DFFEncoder input is {height}x{width} (HxW) but both must be positive multiples of "
        f"the network stride {stride} (= 2 ** (depth - 1)): {hints}. Resize or pad the images, or "
        "use fewer levels.")


def _group_count(num_features: int, max_groups: int) -> int:
  """Largest group count <= ``max_groups`` dividing ``num_features``."""
  return math.gcd(num_features, max_groups)


class GroupNorm(nn.Module):
  """Group normalisation of ``[B, H, W, C]`` with per-channel scale and bias.

  The parameters, their names (``scale``, ``bias``), the statistics (per sample and group:
  mean and ``E[x^2] - E[x]^2``, clipped at 0, epsilon 1e-6, in float32) and hence the values
  are those of ``flax.linen.GroupNorm``; the computation is laid out for XLA:CPU: the two sums
  run over ``[B, H * W, C]`` with channels minor, and the normalisation is one fused
  ``x * a + b`` with per-channel ``a``, ``b`` (flax's version reshapes to
  ``[B, H, W, G, C / G]``, which XLA:CPU ran far slower at 128 x 128 x 16).

  Attributes:
    num_groups: ``G``, dividing ``C``.
    epsilon: added to the variance.
    dtype: output dtype (statistics always float32).
    param_dtype: parameter dtype.
  """
  num_groups: int
  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    batch, height, width, channels = x.shape
    if channels % self.num_groups:
      raise ValueError(f"GroupNorm: {self.num_groups} groups do not divide {channels} channels.")
    scale = self.param("scale", nn.initializers.ones, (channels,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)
    per_group = channels // self.num_groups
    flat = x.reshape(batch, height * width, channels).astype(jnp.float32)
    count = float(height * width * per_group)
    mean = jnp.sum(flat, axis=1).reshape(batch, self.num_groups, per_group).sum(-1) / count
    mean_sq = (jnp.sum(flat * flat, axis=1).reshape(batch, self.num_groups, per_group).sum(-1)
               / count)
    inverse = jax.lax.rsqrt(jnp.maximum(mean_sq - mean * mean, 0.0) + self.epsilon)  # [B, G]
    gain = jnp.repeat(inverse, per_group, axis=1) * scale.astype(jnp.float32)  # [B, C]
    offset = bias.astype(jnp.float32) - jnp.repeat(mean, per_group, axis=1) * gain
    out = x.astype(jnp.float32) * gain[:, None, None, :] + offset[:, None, None, :]
    return out.astype(self.dtype)


class ConvBlock(nn.Module):
  """``num_convs`` x [3x3 conv -> norm -> activation] at constant width.

  Attributes: see :class:`DFFEncoder`.
  """
  features: int
  num_convs: int
  norm: str
  num_groups: int
  activation: str
  dtype: Any
  param_dtype: Any = jnp.float32
  final_activation: bool = True
  conv: str = "auto"
  matmul_dtype: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    act = _ACTIVATIONS[self.activation]
    for index in range(self.num_convs):
      # Named as flax's auto-named nn.Conv was, so every checkpoint loads unchanged.
      x = convolution.Conv3x3(self.features, use_bias=self.norm == "none", dtype=self.dtype,
                              param_dtype=self.param_dtype, algorithm=self.conv,
                              operand_dtype=self.matmul_dtype, name=f"Conv_{index}")(x)
      if self.norm == "group":
        x = GroupNorm(num_groups=_group_count(self.features, self.num_groups),
                      dtype=self.dtype, param_dtype=self.param_dtype)(x)
      elif self.norm == "layer":
        x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype)(x)
      if self.final_activation or index < self.num_convs - 1:
        x = act(x)
    return x


class DFFEncoder(nn.Module):
  """U-Net-like encoder-decoder giving a unit-norm ``descriptor_dim``-D descriptor per pixel.

  Attributes:
    features: width of each level, finest first; ``depth = len(features)`` levels, so the
      input's height and width must be multiples of ``2 ** (depth - 1)``.
    descriptor_dim: ``D``, the descriptor size (64 in the paper).
    convs_per_level: 3x3 convolutions per level, in the encoder and again in the decoder: one
      count for every level, or one per level, finest first (e.g. ``(1, 1, 1, 2)``: a thinner
      pyramid, ``experiments/configs/finetune_thin.py``).
    norm: ``"group"`` (GroupNorm, default), ``"layer"`` or ``"none"`` (then convs have biases).
    num_groups: GroupNorm groups (the largest divisor of each width not above this is used).
    activation: ``"relu"``, ``"gelu"``, ``"silu"`` or ``"leaky_relu"``.
    upsample: ``"bilinear"``, ``"nearest"`` (1x1 conv at the coarse level, then 2x resize) or
      ``"transpose"`` (2x2 stride-2 transposed conv).
    downsample: ``"max_pool"`` (2x2) or ``"strided_conv"`` (3x3, stride 2).
    dtype: activation / computation dtype (e.g. ``jnp.bfloat16``); the head and the
      normalisation run in float32 and the output is always float32.
    param_dtype: parameter dtype (float32).
    remat: rematerialise every conv block in the backward pass (``nn.remat``): the activations
      inside a block are recomputed instead of stored, for memory-bound training and
      differentiation through the alignment (same parameters and outputs).
    conv: how the 3x3 convolutions are computed, ``"auto"`` (default), ``"xla"``,
      ``"winograd"`` or ``"matmul"`` (:func:`dff_jax.convolution.conv3x3_algorithm`): the same
      function to float32 rounding, a choice of computation, not of model.
    matmul_dtype: the operand dtype of the matrix products: every 3x3 convolution past the
      image's own (``operand_dtype`` of :class:`dff_jax.convolution.Conv3x3`) and, for
      :class:`PointDFFEncoder`, the head's two layers. ``"bfloat16"`` rounds those operands
      (accumulating in float32; activations, norms and descriptors stay in ``dtype`` /
      float32): an inference option for matrix units (Intel AMX, TPU, recent GPUs), trading
      about 3 significant digits of each product for speed. ``None`` / ``"float32"``: as
      ``dtype``.
  """
  features: Sequence[int] = (32, 64, 96, 128)
  descriptor_dim: int = 64
  convs_per_level: int | Sequence[int] = 2
  norm: str = "group"
  num_groups: int = 8
  activation: str = "relu"
  upsample: str = "bilinear"
  downsample: str = "max_pool"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: bool = False
  conv: str = "auto"
  matmul_dtype: Optional[str] = None

  @property
  def stride(self) -> int:
    return stride_of(self.features)

  def _check_fields(self) -> None:
    if len(self.features) < 1 or any(int(f) < 1 for f in self.features):
      raise ValueError(f"DFFEncoder.features must be a non-empty sequence of positive widths, "
                       f"got {self.features!r}.")
    for name, value, allowed in (("norm", self.norm, _NORMS),
                                 ("activation", self.activation, tuple(_ACTIVATIONS)),
                                 ("upsample", self.upsample, _UPSAMPLES),
                                 ("downsample", self.downsample, _DOWNSAMPLES),
                                 ("conv", self.conv, convolution.CONV_ALGORITHMS),
                                 ("matmul_dtype", self.matmul_dtype,
                                  (None,) + convolution.OPERAND_DTYPES)):
      if value not in allowed:
        raise ValueError(f"DFFEncoder.{name}={value!r} is not one of {allowed}.")
    if self.conv == "winograd" and self.matmul_dtype not in (None, "float32"):
      raise ValueError(f"DFFEncoder.conv='winograd' needs float32 products, not matmul_dtype="
                       f"{self.matmul_dtype!r}: use conv='auto' or 'matmul'.")
    counts = self.convs_per_level
    if not isinstance(counts, int) and len(counts) != len(self.features):
      raise ValueError(f"DFFEncoder.convs_per_level {tuple(counts)} needs one count per level "
                       f"({len(self.features)}), or a single count.")
    if min(self._convs(level) for level in range(len(self.features))) < 1 or (
        self.descriptor_dim < 1):
      raise ValueError("DFFEncoder.convs_per_level and descriptor_dim must be >= 1, got "
                       f"{self.convs_per_level} and {self.descriptor_dim}.")

  def _convs(self, level: int) -> int:
    """3x3 convolutions of each block at ``level`` (0 = finest)."""
    counts = self.convs_per_level
    return int(counts) if isinstance(counts, int) else int(counts[level])

  def _block(self, width: int, name: str, level: int, final_activation: bool = True
             ) -> nn.Module:
    block_class = nn.remat(ConvBlock) if self.remat else ConvBlock
    return block_class(width, self._convs(level), self.norm, self.num_groups, self.activation,
                       self.dtype, self.param_dtype, final_activation, self.conv,
                       self.matmul_dtype, name=name)

  def _pyramid(self, images: Array) -> list:
    """The contracting half: ``len(features)`` maps ``[B, H / 2**l, W / 2**l, features[l]]``
    (called from a compact method; submodules ``encoder_<l>`` and ``down_<l>``)."""
    x = images.astype(self.dtype)
    levels = []
    for level, width_ in enumerate(self.features):
      if level > 0:
        if self.downsample == "max_pool":
          x = _max_pool_2x(x)
        else:
          x = nn.Conv(width_, (3, 3), strides=(2, 2), padding="SAME", dtype=self.dtype,
                      param_dtype=self.param_dtype, name=f"down_{level}")(x)
      x = self._block(width_, f"encoder_{level}", level,
                      final_activation=len(self.features) > 1)(x)
      levels.append(x)
    return levels

  def _check_input(self, images: Array) -> None:
    self._check_fields()
    if images.ndim != 4:
      raise ValueError(f"{type(self).__name__} expects images [B, H, W, C], got shape "
                       f"{images.shape}.")
    check_image_size(images.shape[1], images.shape[2], self.stride)

  def dense(self, images: Array) -> Array:
    """``[B, H, W, D]`` float32 dense descriptor maps (``module.apply(..., method="dense")``);
    for this module the same as calling it."""
    return descriptor_fields.to_dense_batch(self(images))

  @nn.compact
  def __call__(self, images: Array) -> Array:
    """Descriptors of a batch of images.

    Args:
      images: ``[B, H, W, C]`` float normalised images (see :func:`preprocess_images`); ``H`` and
        ``W`` multiples of :attr:`stride`.

    Returns:
      ``[B, H, W, descriptor_dim]`` float32 descriptors with unit L2 norm over the last axis;
      descriptor ``[b, i, j]`` belongs to pixel ``(i, j)``, centre ``(j + 0.5, i + 0.5)``.
    """
    self._check_input(images)
    skips = self._pyramid(images)
    x = skips[-1]
    for level in range(len(self.features) - 2, -1, -1):
      width_ = self.features[level]
      if self.upsample == "transpose":
        x = nn.ConvTranspose(width_, (2, 2), strides=(2, 2), padding="VALID", dtype=self.dtype,
                             param_dtype=self.param_dtype, name=f"up_{level}")(x)
      else:
        x = nn.Conv(width_, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype,
                    name=f"up_{level}")(x)
        if self.upsample == "nearest":
          x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        else:
          x = _upsample_bilinear_2x(x)
      x = jnp.concatenate([x, skips[level]], axis=-1)
      # The head reads the last block's normalised pre-activations: after a ReLU a pixel can have
      # all features zero, which would give a zero (not unit) descriptor.
      x = self._block(width_, f"decoder_{level}", level, final_activation=level > 0)(x)

    x = nn.Conv(self.descriptor_dim, (1, 1), dtype=jnp.float32, param_dtype=self.param_dtype,
                name="head")(x.astype(jnp.float32))
    return l2_normalize(x.astype(jnp.float32), axis=-1)


class PointDFFEncoder(DFFEncoder):
  """The DFF encoder with a point head: descriptors computed only where they are read.

  The contracting half of :class:`DFFEncoder` (same submodules ``encoder_<l>``, so a trained
  U-Net's encoder half loads into it) gives a feature pyramid once per crop; a point's
  descriptor is the pyramid sampled bilinearly at the point on every level, concatenated
  (``C = sum(features)``) and passed through a two-layer head (``C -> head_hidden -> D``, GELU,
  float32), then L2-normalised (:mod:`dff_jax.descriptor_fields`). The decoder, which computed
  ``H x W`` descriptors of which a cascade stage reads 68, is gone: at the shipped widths and
  128 x 128 the forward pass needs 0.41 GFLOP instead of 1.13
  (``experiments/results/benchmark_encoder_point.json``).

  Calling the module returns a batched :class:`dff_jax.descriptor_fields.PointField`;
  ``method="dense"`` the same function at every pixel centre, ``[B, H, W, D]``.

  Attributes: those of :class:`DFFEncoder` (``upsample`` unused), plus
    head_hidden: the head's hidden width ``M``.
  """
  head_hidden: int = 128

  @nn.compact
  def __call__(self, images: Array) -> descriptor_fields.PointField:
    """Point fields of a batch of images.

    Args:
      images: ``[B, H, W, C]`` float normalised images; ``H``, ``W`` multiples of :attr:`stride`.

    Returns:
      :class:`~dff_jax.descriptor_fields.PointField` with levels ``[B, H / 2**l, W / 2**l,
      features[l]]`` (``dtype``) and the head's float32 parameters broadcast to ``[B, ...]``
      (``shared_head``: one head for every face).
    """
    self._check_input(images)
    if self.head_hidden < 1:
      raise ValueError(f"PointDFFEncoder.head_hidden must be >= 1, got {self.head_hidden}.")
    levels = self._pyramid(images)
    width = int(sum(self.features))
    dense_init = nn.initializers.lecun_normal()
    head = {
        "hidden_kernel": self.param("hidden_kernel", dense_init, (width, self.head_hidden),
                                    self.param_dtype),
        "hidden_bias": self.param("hidden_bias", nn.initializers.zeros, (self.head_hidden,),
                                  self.param_dtype),
        "out_kernel": self.param("out_kernel", dense_init, (self.head_hidden,
                                                            self.descriptor_dim),
                                 self.param_dtype),
        "out_bias": self.param("out_bias", nn.initializers.zeros, (self.descriptor_dim,),
                               self.param_dtype),
    }
    head = {k: v.astype(jnp.float32) for k, v in head.items()}
    return descriptor_fields.PointField(
        levels=tuple(levels), head=descriptor_fields.broadcast_head(head, images.shape[:1]),
        shared_head=True, head_dtype=self.matmul_dtype or "float32")


def _max_pool_2x(x: Array) -> Array:
  """2x2, stride-2 max pooling of ``[B, h, w, C]`` (even h, w) as elementwise maxima.

  Same values as ``nn.max_pool(x, (2, 2), strides=(2, 2))``; on XLA:CPU the maximum of the
  four strided slices (and its gradient, a few selects) is much cheaper than ``reduce_window``
  and its ``select_and_scatter`` gradient. (A reshape + ``jnp.max`` formulation gave NaN
  gradients under jit in a train step on XLA:CPU, so it is not used.)
  """
  top = jnp.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2])
  bottom = jnp.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2])
  return jnp.maximum(top, bottom)


def _upsample_bilinear_2x(x: Array) -> Array:
  """Exact 2x bilinear upsampling (half-pixel centres, edge clamped) of ``[B, h, w, C]``.

  Output pixel ``2i`` mixes inputs ``i-1, i`` with weights ``1/4, 3/4``; ``2i+1`` mixes ``i, i+1``
  with ``3/4, 1/4``, i.e. ``jax.image.resize(..., "bilinear")`` with edge clamping, written as
  shifts so it costs a few adds instead of a resampling matmul.
  """
  def along(y: Array, axis: int) -> Array:
    n = y.shape[axis]
    first = jax.lax.slice_in_dim(y, 0, 1, axis=axis)
    last = jax.lax.slice_in_dim(y, n - 1, n, axis=axis)
    prev = jnp.concatenate([first, jax.lax.slice_in_dim(y, 0, n - 1, axis=axis)], axis=axis)
    nxt = jnp.concatenate([jax.lax.slice_in_dim(y, 1, n, axis=axis), last], axis=axis)
    even = 0.75 * y + 0.25 * prev
    odd = 0.75 * y + 0.25 * nxt
    stacked = jnp.stack([even, odd], axis=axis + 1)
    shape = list(y.shape)
    shape[axis] = 2 * n
    return stacked.reshape(shape)

  return along(along(x, 1), 2)


def preprocess_images(images_uint8: Array, channels: int = 1) -> Array:
  """uint8 RGB (or grey) images -> normalised float32 network input.

  Grey conversion (``channels=1``) uses ITU-R BT.601 luma weights (0.299, 0.587, 0.114), as a
  greyscale JPEG decoder would; a grey input (``[..., 1]``, e.g. ``read_image(path,
  grey=True)``) is that luma already and is used as is (replicated for ``channels=3``). Values
  are scaled as ``(x / 255 - 0.5) / 0.25`` so that typical face crops are roughly zero-mean,
  unit-variance ([0, 255] maps to [-2, 2]).

  Args:
    images_uint8: ``[..., H, W, 3]`` RGB or ``[..., H, W, 1]`` grey, uint8 (or float in
      [0, 255]).
    channels: 1 (grey, as in the paper) or 3 (RGB).

  Returns:
    ``[..., H, W, channels]`` float32.
  """
  if channels not in (1, 3):
    raise ValueError(f"preprocess_images: channels must be 1 (grey) or 3 (RGB), got {channels}.")
  if images_uint8.shape[-1] not in (1, 3):
    raise ValueError("preprocess_images expects RGB images [..., H, W, 3] or grey ones "
                     f"[..., H, W, 1], got shape {images_uint8.shape}.")
  x = jnp.asarray(images_uint8).astype(jnp.float32)
  if x.shape[-1] != channels:
    x = (jnp.sum(x * jnp.asarray(BT601_WEIGHTS, jnp.float32), axis=-1, keepdims=True)
         if channels == 1 else jnp.broadcast_to(x, x.shape[:-1] + (3,)))
  return (x / 255.0 - PIXEL_MEAN) / PIXEL_STD


def _field(config: Any, name: str, default: Any) -> Any:
  """``config.name`` / ``config[name]`` or ``default`` (mappings, ConfigDicts, objects)."""
  if isinstance(config, Mapping):
    return config.get(name, default)
  try:
    return config[name] if name in config else default  # ConfigDict supports both.
  except TypeError:
    return getattr(config, name, default)


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def encoder_from_config(config: Any) -> DFFEncoder:
  """Builds a :class:`DFFEncoder` from a mapping / ``ml_collections.ConfigDict``.

  Recognised fields (all optional; defaults are the :class:`DFFEncoder` defaults):
  ``preset`` (a :data:`PRESETS` name, overridden by the other fields), ``features``,
  ``descriptor_dim``, ``convs_per_level``, ``norm``, ``num_groups``, ``activation``,
  ``upsample``, ``downsample``, ``dtype`` (a dtype or ``"float32"`` / ``"bfloat16"``), ``remat``,
  ``conv`` (how the 3x3 convolutions are computed), ``matmul_dtype`` (``"float32"`` or
  ``"bfloat16"``: the matrix products' operands), ``head`` (``"dense"``: the U-Net
  :class:`DFFEncoder`; ``"point"``: :class:`PointDFFEncoder`) and, for the point head,
  ``head_hidden``.
  ``channels`` and ``image_size`` are accepted and ignored (the module adapts to its input; the
  caller uses them for :func:`preprocess_images` and data). A config with an ``encoder``
  sub-config is read from that sub-config.
  """
  sub = _field(config, "encoder", None)
  if sub is not None and _field(config, "features", None) is None:
    config = sub
  kwargs = {}
  preset = _field(config, "preset", None)
  if preset:
    if preset not in PRESETS:
      raise ValueError(f"Unknown encoder preset {preset!r}; known: {sorted(PRESETS)}.")
    kwargs.update({k: v for k, v in PRESETS[preset].items()
                   if k not in ("image_size", "channels", "head")})
  head = _field(config, "head", None) or PRESETS.get(preset or "", {}).get("head", "dense")
  if head not in _HEADS:
    raise ValueError(f"Unknown encoder head {head!r}; use one of {_HEADS}.")
  names = ["features", "descriptor_dim", "convs_per_level", "norm", "num_groups", "activation",
           "upsample", "downsample", "dtype", "remat", "conv", "matmul_dtype"]
  if head == "point":
    names.append("head_hidden")
  else:
    kwargs.pop("head_hidden", None)
  for name in names:
    value = _field(config, name, None)
    if value is not None:
      kwargs[name] = value
  if "features" in kwargs:
    kwargs["features"] = tuple(int(f) for f in kwargs["features"])
  if not isinstance(kwargs.get("convs_per_level", 2), int):  # a list from JSON: keep it hashable
    kwargs["convs_per_level"] = tuple(int(c) for c in kwargs["convs_per_level"])
  if isinstance(kwargs.get("dtype"), str):
    if kwargs["dtype"] not in _DTYPES:
      raise ValueError(f"Unknown encoder dtype {kwargs['dtype']!r}; use one of {sorted(_DTYPES)}.")
    kwargs["dtype"] = _DTYPES[kwargs["dtype"]]
  module = (PointDFFEncoder if head == "point" else DFFEncoder)(**kwargs)
  module._check_fields()
  return module


def count_params(params: Any) -> int:
  """Number of scalars in a parameter pytree."""
  return int(sum(np.prod(np.shape(p)) for p in jax.tree_util.tree_leaves(params)))
