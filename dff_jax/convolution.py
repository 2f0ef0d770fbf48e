"""The encoder's 3x3 convolutions: one Flax module, four ways to compute it.

:class:`Conv3x3` has ``flax.linen.Conv``'s parameters (names, shapes, initial values), so every
checkpoint loads unchanged, and computes the same stride-1, zero-padded ("SAME") 3x3
cross-correlation in whichever way is cheapest for its shape (:func:`conv3x3_algorithm`):

* :func:`shifted_conv3x3`: ``9 * C`` fused multiply-adds of shifted slices, for the grey or RGB
  image (at most :data:`SHIFTED_CONV_MAX_CHANNELS` channels);
* :func:`winograd_conv3x3`: Winograd's F(4 x 4, 3 x 3), a quarter of the multiply-adds, for
  float32 on a CPU with 32-64 input channels (:data:`WINOGRAD_IN_CHANNELS`);
* :func:`matmul_conv3x3`: three matrix products, for bfloat16 operands on a CPU with at least
  :data:`MATMUL_MIN_CHANNELS` input channels (matrix units such as Intel's AMX multiply
  bfloat16 several times faster than float32);
* XLA's convolution (``lax.conv_general_dilated``) elsewhere, accelerators included.

All four are plain ``jnp`` / ``lax`` and differentiable; they agree to float32 rounding
(``tests/test_convolution.py``). ``Conv3x3(operand_dtype="bfloat16")`` rounds a layer's input
and kernel to bfloat16 and accumulates in float32: an inference option
(``DFFEncoder.matmul_dtype``), not a different model. Arrays are NHWC, kernels HWIO.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

Array = Any


# Inputs with at most this many channels are convolved as 9 * C broadcast multiply-adds (one
# fused elementwise loop): timed alone at batch 8 and 96 x 96 (ad hoc, while profiling; the
# committed figures are the whole encoder's, WORKSPACE.md section 15), XLA:CPU's convolution ran
# the grey first layer far below the next layer's FLOP rate, and the multiply-adds beat it for 1
# and 3 input channels but not from 8.
SHIFTED_CONV_MAX_CHANNELS = 3


def shifted_conv3x3(x: Array, kernel: Array) -> Array:
  """3x3, stride-1, zero-padded ("SAME") cross-correlation as ``9 * C`` multiply-adds.

  Args:
    x: ``[B, H, W, C]`` images or features.
    kernel: ``[3, 3, C, F]`` (HWIO, as ``flax.linen.Conv``).

  Returns:
    ``[B, H, W, F]``: ``sum_{i,j,c} x_pad[:, y + i, x + j, c] * kernel[i, j, c]``, the same as
    ``lax.conv_general_dilated(x, kernel, (1, 1), "SAME")`` in NHWC / HWIO, for any ``C``; worth
    it only for small ``C`` (:data:`SHIFTED_CONV_MAX_CHANNELS`).
  """
  _, height, width, channels = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = None
  for i in range(3):
    for j in range(3):
      for c in range(channels):
        term = padded[:, i:i + height, j:j + width, c:c + 1] * kernel[i, j, c]
        out = term if out is None else out + term
  return out


# Winograd's minimal filtering F(4 x 4, 3 x 3) (Lavin and Gray, "Fast algorithms for
# convolutional neural networks", 2016): a 6 x 6 input tile d and a 3 x 3 kernel g give the tile's
# 4 x 4 outputs as A^T [(G g G^T) * (B^T d B)] A, 36 products per channel pair instead of 144.
_WINOGRAD_BT = np.array([[4, 0, -5, 0, 1, 0],
                         [0, -4, -4, 1, 1, 0],
                         [0, 4, -4, -1, 1, 0],
                         [0, -2, -1, 2, 1, 0],
                         [0, 2, -1, -2, 1, 0],
                         [0, 4, 0, -5, 0, 1]], np.float32)  # [6, 6]
_WINOGRAD_G = np.array([[1 / 4, 0, 0],
                        [-1 / 6, -1 / 6, -1 / 6],
                        [-1 / 6, 1 / 6, -1 / 6],
                        [1 / 24, 1 / 12, 1 / 6],
                        [1 / 24, -1 / 12, 1 / 6],
                        [0, 0, 1]], np.float32)  # [6, 3]
_WINOGRAD_AT = np.array([[1, 1, 1, 1, 1, 0],
                         [0, 1, -1, 2, -2, 0],
                         [0, 1, 1, 4, 4, 0],
                         [0, 1, -1, 8, -8, 1]], np.float32)  # [4, 6]
_WINOGRAD_TILE = 4

# ``Conv3x3(algorithm="auto")`` uses Winograd for float32 convolutions on a CPU whose input has
# between these many channels (inclusive). Where XLA:CPU's convolution runs well below the matmul
# peak (32 and 64 channels: about half of it) Winograd's quarter of the multiply-adds pays for its
# transforms; with 16 input channels the transforms cost more than they save, and with 128 XLA's
# convolution is near the peak already. Timed ad hoc (2-core AMD EPYC, the fast pair's encoder at
# batch 8, 96 px, variants in turns; the committed figures are the encoder's and the stream's,
# WORKSPACE.md section 15): 51.2 ms per call with this range, 56.6 with XLA's convolution
# throughout, 53.2 with the 128-channel layer too, slower still with the 16-channel ones.
# Timed again once the kernel transform was elementwise (:func:`winograd_kernel`; one core of
# the 2-core Intel Xeon, batch 4 and 8, ad hoc): extending the range to 128 channels changed
# nothing measurable, and to 16 made the encoder about 15 % slower.
WINOGRAD_IN_CHANNELS = (32, 64)
CONV_ALGORITHMS = ("auto", "xla", "winograd", "matmul")
# ``"auto"`` computes a convolution with bfloat16 operands and at least this many input channels
# as three matrix products (:func:`matmul_conv3x3`) on a CPU, and by XLA's convolution below it.
# Timed ad hoc at batch 8 on a 2-core Intel Xeon with AMX (the fast pair's layer shapes at 96 px,
# variants in turns; the committed figures are the encoder's and the stream's, WORKSPACE.md
# section 15): 32 -> 64 channels at 24 x 24 took 1.16 ms as products and 1.55 ms by XLA's
# bfloat16 convolution; 16 -> 32 at 48 x 48, 2.09 ms as products and 1.57 by XLA.
MATMUL_MIN_CHANNELS = 32
OPERAND_DTYPES = ("float32", "bfloat16")


def _transform_rows(matrix: np.ndarray, parts: Sequence[Array]) -> list:
  """``[sum_k matrix[i, k] * parts[k] for each row i]`` as multiply-adds of whole arrays (zero
  coefficients skipped), which XLA fuses into elementwise loops."""
  rows = []
  for coefficients in matrix:
    row = None
    for coefficient, part in zip(coefficients.tolist(), parts):
      if coefficient == 0:
        continue
      term = part if coefficient == 1 else -part if coefficient == -1 else part * coefficient
      row = term if row is None else row + term
    rows.append(row)
  return rows


def xla_conv3x3(x: Array, kernel: Array, out_dtype: Any = None) -> Array:
  """3x3, stride-1, zero-padded ("SAME") cross-correlation by XLA's convolution
  (``lax.conv_general_dilated``, NHWC / HWIO): ``[B, H, W, C], [3, 3, C, F] -> [B, H, W, F]``
  in ``out_dtype`` (``None``: ``x``'s dtype)."""
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      preferred_element_type=out_dtype)


def winograd_kernel(kernel: Array) -> Array:
  """Winograd's kernel transform ``G g G^T`` of every channel pair of a 3x3 kernel.

  Args:
    kernel: ``[3, 3, C, F]`` (HWIO).

  Returns:
    ``[36, C, F]`` in ``kernel``'s dtype: entry ``6 a + b`` is ``sum_ij G[a, i] g[i, j] G[b, j]``.
    Written as multiply-adds of whole ``[C, F]`` slices (:func:`_transform_rows`), which XLA fuses
    into one elementwise pass over the kernel: as an ``einsum`` XLA:CPU ran it as matrix products
    with 3-long contractions and a transpose, about a third of the fast encoder's op time at
    batch 4 (XLA's profiler, ad hoc, no results file).
  """
  rows = _transform_rows(_WINOGRAD_G, [kernel[i] for i in range(3)])  # 6 x [3, C, F]
  return jnp.stack([entry for row in rows
                    for entry in _transform_rows(_WINOGRAD_G, [row[j] for j in range(3)])])


@jax.custom_jvp
def winograd_conv3x3(x: Array, kernel: Array) -> Array:
  """3x3, stride-1, zero-padded ("SAME") cross-correlation by Winograd's F(4 x 4, 3 x 3).

  The output is cut into 4 x 4 tiles (the input padded with zeros up to whole tiles; the extra
  outputs are dropped); each tile's 6 x 6 input window and the kernel are transformed
  (``B^T d B``, ``G g G^T``), multiplied as 36 ``[tiles, C] x [C, F]`` matrix products, and
  transformed back (``A^T m A``). The same values as :func:`shifted_conv3x3` to float32 rounding
  (the transforms' coefficients reach 8 and 1/24: errors up to about 1e-5 of the outputs' scale),
  with 4x fewer multiply-adds in the products; worth it on XLA:CPU for the channel counts of
  :data:`WINOGRAD_IN_CHANNELS`.

  Derivatives: the convolution is linear in each argument, so its JVP is
  ``conv(dx, kernel) + conv(x, dkernel)``, computed by XLA's convolution (:func:`xla_conv3x3`);
  reverse mode transposes those, i.e. runs XLA's own backward convolutions. Differentiated
  through Winograd's slices and products instead, a training step of the fast pair's encoder
  took 1.29x as long as with XLA's convolution throughout (this module's first version,
  ``experiments/results/benchmark_encoder_winograd_autodiff_train_amd_slow.json``); so the
  forward pass is Winograd's and the backward pass XLA's, the same values.

  Args:
    x: ``[B, H, W, C]`` float features (any ``H``, ``W`` >= 1).
    kernel: ``[3, 3, C, F]`` (HWIO, as ``flax.linen.Conv``).

  Returns:
    ``[B, H, W, F]``, as :func:`shifted_conv3x3`.
  """
  batch, height, width, channels = x.shape
  features = kernel.shape[-1]
  tile, window = _WINOGRAD_TILE, _WINOGRAD_TILE + 2
  tiles_y, tiles_x = -(-height // tile), -(-width // tile)
  padded = jnp.pad(x, ((0, 0), (1, 1 + tiles_y * tile - height),
                       (1, 1 + tiles_x * tile - width), (0, 0)))
  # Row i of every tile's window: [B, tiles_y, W_padded, C]; then column j: [B, ty, tx, C].
  window_rows = [padded[:, i:i + tile * tiles_y:tile] for i in range(window)]
  transformed = []
  for row in _transform_rows(_WINOGRAD_BT, window_rows):
    transformed.extend(_transform_rows(
        _WINOGRAD_BT, [row[:, :, j:j + tile * tiles_x:tile] for j in range(window)]))
  v = jnp.stack(transformed).reshape(window ** 2, batch * tiles_y * tiles_x, channels)
  u = winograd_kernel(kernel)
  m = jnp.einsum("knc,kcf->knf", v, u, precision=jax.lax.Precision.HIGHEST)
  m = m.reshape(window, window, batch, tiles_y, tiles_x, features)
  out_rows = [jnp.stack(_transform_rows(_WINOGRAD_AT, list(row)), axis=3)
              for row in _transform_rows(_WINOGRAD_AT, list(m))]
  out = jnp.stack(out_rows, axis=2)  # [B, tiles_y, 4, tiles_x, 4, F]
  out = out.reshape(batch, tiles_y * tile, tiles_x * tile, features)[:, :height, :width]
  return out.astype(x.dtype)


@functools.partial(winograd_conv3x3.defjvp, symbolic_zeros=True)
def _winograd_conv3x3_jvp(primals, tangents):
  """The JVP by XLA's convolution (see :func:`winograd_conv3x3`); symbolic-zero tangents (an
  argument not differentiated) cost nothing."""
  x, kernel = primals
  dx, dkernel = tangents
  terms = []
  if not isinstance(dx, SymbolicZero):
    terms.append(xla_conv3x3(dx, kernel))
  if not isinstance(dkernel, SymbolicZero):
    terms.append(xla_conv3x3(x, dkernel))
  out = winograd_conv3x3(x, kernel)
  tangent = sum(terms[1:], terms[0]) if terms else jnp.zeros_like(out)
  return out, tangent.astype(out.dtype)


def matmul_conv3x3(x: Array, kernel: Array, out_dtype: Any = None) -> Array:
  """3x3, stride-1, zero-padded ("SAME") cross-correlation as three matrix products.

  The input's three column shifts are stacked along channels once (``[B, H + 2, W, 3 C]``);
  kernel row ``i`` is then one ``[B H W, 3 C] x [3 C, F]`` product with the rows shifted by
  ``i``, and the three products are summed in float32 (``preferred_element_type``), so
  ``bfloat16`` inputs lose nothing in the accumulation. For ``bfloat16`` on a CPU with matrix
  units (Intel AMX) XLA:CPU runs such products several times faster than float32, and far
  faster than its ``bfloat16`` convolution (:func:`conv3x3_algorithm`).

  Args:
    x: ``[B, H, W, C]`` float features.
    kernel: ``[3, 3, C, F]`` (HWIO, as ``flax.linen.Conv``), ``x``'s dtype.
    out_dtype: the result's dtype (``None``: ``x``'s).

  Returns:
    ``[B, H, W, F]``: the values of :func:`shifted_conv3x3` (exact products of the operands,
    summed in float32), rounded once to ``out_dtype``.
  """
  batch, height, width, channels = x.shape
  features = kernel.shape[-1]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  columns = jnp.concatenate([padded[:, :, j:j + width] for j in range(3)], axis=-1)
  out = None
  for i in range(3):
    rows = columns[:, i:i + height].reshape(-1, 3 * channels)
    term = jnp.dot(rows, kernel[i].reshape(3 * channels, features),
                   preferred_element_type=jnp.float32)
    out = term if out is None else out + term
  return out.reshape(batch, height, width, features).astype(out_dtype or x.dtype)


def conv3x3_algorithm(algorithm: str, in_channels: int, dtype: Any) -> str:
  """Which computation a :class:`Conv3x3` runs on operands of ``dtype``: ``"shifted"``
  (:func:`shifted_conv3x3`) for at most :data:`SHIFTED_CONV_MAX_CHANNELS` input channels,
  whatever ``algorithm`` says; otherwise ``"winograd"`` (:func:`winograd_conv3x3`, float32
  operands only: a ``ValueError`` otherwise), ``"matmul"`` (:func:`matmul_conv3x3`) or ``"xla"``
  (XLA's convolution) as asked. ``"auto"``
  on a CPU backend: Winograd for float32 with an input channel count in
  :data:`WINOGRAD_IN_CHANNELS`, matrix products for bfloat16 with at least
  :data:`MATMUL_MIN_CHANNELS`; XLA's convolution elsewhere (accelerators have their own fast
  convolutions)."""
  if algorithm not in CONV_ALGORITHMS:
    raise ValueError(f"Unknown convolution algorithm {algorithm!r}; use one of "
                     f"{CONV_ALGORITHMS}.")
  if in_channels <= SHIFTED_CONV_MAX_CHANNELS:
    return "shifted"
  if algorithm == "winograd" and jnp.dtype(dtype) != jnp.float32:
    # Its transforms (coefficients up to 8 and 1/24) would be computed on the rounded operands.
    raise ValueError(f"Winograd's convolution needs float32 operands, got {jnp.dtype(dtype).name}: "
                     "use conv='matmul' or 'auto' with bfloat16 products.")
  if algorithm == "auto":
    if jax.default_backend() != "cpu":
      return "xla"
    low, high = WINOGRAD_IN_CHANNELS
    if jnp.dtype(dtype) == jnp.float32 and low <= in_channels <= high:
      return "winograd"
    if jnp.dtype(dtype) == jnp.bfloat16 and in_channels >= MATMUL_MIN_CHANNELS:
      return "matmul"
    return "xla"
  return algorithm


class Conv3x3(nn.Module):
  """A 3x3, stride-1, "SAME" convolution with ``flax.linen.Conv``'s parameters and values.

  Parameters ``kernel [3, 3, C, F]`` (LeCun normal) and, with ``use_bias``, ``bias [F]``
  (zeros): the names, shapes and initialisation of ``nn.Conv(F, (3, 3), padding="SAME")``, so
  checkpoints and seeds carry over. Inputs of at most :data:`SHIFTED_CONV_MAX_CHANNELS`
  channels (the grey or RGB image) go through :func:`shifted_conv3x3`, the rest through
  Winograd's algorithm, matrix products or XLA's convolution (:func:`conv3x3_algorithm`): the
  same values to float32 rounding.

  Attributes:
    features: ``F``.
    use_bias: whether to add ``bias``.
    dtype: computation dtype (inputs and parameters are promoted to it; the output's dtype).
    param_dtype: parameter dtype.
    algorithm: one of :data:`CONV_ALGORITHMS` (:func:`conv3x3_algorithm`).
    operand_dtype: ``"bfloat16"``: input and kernel rounded to bfloat16 before the products
      (accumulated in float32, returned in ``dtype``), for inputs of more than
      :data:`SHIFTED_CONV_MAX_CHANNELS` channels; ``None`` or ``"float32"``: ``dtype``'s.
  """
  features: int
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  algorithm: str = "auto"
  operand_dtype: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (3, 3, x.shape[-1], self.features), self.param_dtype)
    bias = (self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    out_dtype = x.dtype
    if x.shape[-1] > SHIFTED_CONV_MAX_CHANNELS and self.operand_dtype not in (None, "float32"):
      x, kernel = x.astype(self.operand_dtype), kernel.astype(self.operand_dtype)
    algorithm = conv3x3_algorithm(self.algorithm, x.shape[-1], x.dtype)
    if algorithm == "shifted":
      y = shifted_conv3x3(x, kernel)
    elif algorithm == "winograd":
      y = winograd_conv3x3(x, kernel).astype(out_dtype)
    elif algorithm == "matmul":
      y = matmul_conv3x3(x, kernel, out_dtype)
    else:
      y = xla_conv3x3(x, kernel, out_dtype)
    return y if bias is None else y + bias
