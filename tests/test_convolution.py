"""Tests for dff_jax.convolution: the 3x3 convolution's three computations against planted
answers (one-tap shifts, box sums, a NumPy loop), flax's parameters, gradients, and which
computation each layer of an encoder runs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from conftest import numpy_conv3x3
from dff_jax import convolution as conv
from dff_jax import encoder as enc


def _apply(algorithm, kernel, x):
  return jax.jit(conv.Conv3x3(kernel.shape[-1], use_bias=False, algorithm=algorithm).apply)(
      {"params": {"kernel": jnp.asarray(kernel)}}, x)


@pytest.mark.parametrize("algorithm,channels", [("auto", 1), ("auto", 3), ("xla", 5),
                                                ("winograd", 5), ("auto", 32)])
def test_conv3x3_planted_shifts_and_flax_parameters(algorithm, channels):
  """A kernel whose only non-zero tap is ``kernel[i, j, c, f] = w`` moves input channel ``c`` by
  ``(1 - i, 1 - j)`` pixels into output ``f``, scaled by ``w``, with zeros entering at the
  border (planted), whichever computation runs (the shifted multiply-adds for 1 and 3 channels,
  XLA's convolution, Winograd's; 32 channels is Winograd's under ``"auto"`` on this CPU). The
  7 x 6 image is not a whole number of Winograd's 4 x 4 tiles. The parameters have
  ``nn.Conv``'s names, shapes and initial values, so checkpoints and seeds carry over; with a
  bias, the values are ``nn.Conv``'s."""
  rng = np.random.default_rng(channels)
  x = jnp.asarray(rng.normal(size=(2, 7, 6, channels)), jnp.float32)
  for (i, j, c, f, w) in [(0, 0, 0, 1, 2.0), (2, 1, channels - 1, 0, -0.5), (1, 2, 0, 2, 1.0)]:
    kernel = np.zeros((3, 3, channels, 3), np.float32)
    kernel[i, j, c, f] = w
    out = np.asarray(_apply(algorithm, kernel, x))
    expected = np.zeros((2, 7, 6, 3), np.float32)
    dy, dx = 1 - i, 1 - j  # output (y, x) reads input (y - dy, x - dx)
    src = np.asarray(x)[:, max(0, -dy):7 - max(0, dy), max(0, -dx):6 - max(0, dx), c]
    expected[:, max(0, dy):7 - max(0, -dy), max(0, dx):6 - max(0, -dx), f] = w * src
    np.testing.assert_allclose(out, expected, atol=1e-5)
  ours = conv.Conv3x3(4, algorithm=algorithm)
  reference = nn.Conv(4, (3, 3), padding="SAME")
  params = ours.init(jax.random.key(7), x)
  reference_params = reference.init(jax.random.key(7), x)
  assert jax.tree.structure(params) == jax.tree.structure(reference_params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference_params)):
    np.testing.assert_array_equal(a, b)
  params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias too
  reference_out = reference.apply(params, x)
  np.testing.assert_allclose(jax.jit(ours.apply)(params, x), reference_out,
                             atol=1e-5 * float(jnp.max(jnp.abs(reference_out))))


@pytest.mark.parametrize("height,width", [(1, 1), (4, 4), (9, 13)])
def test_winograd_box_sums_and_the_definition(height, width):
  """Winograd's F(4 x 4, 3 x 3) on planted inputs: an all-ones kernel on an image of ones sums
  each pixel's in-image neighbours, ``9 * C`` inside, ``6 * C`` on an edge, ``4 * C`` at a corner
  (``C`` at a lone pixel; exact counts); on random features and kernels it gives the
  convolution's definition computed in float64 by NumPy to float32 rounding, for images of one
  pixel, one tile and a part of a tile."""
  channels, features = 32, 5
  ones = jnp.ones((1, height, width, channels), jnp.float32)
  out = np.asarray(jax.jit(conv.winograd_conv3x3)(ones, jnp.ones((3, 3, channels, features))))
  # Neighbours in the image along each axis: 3, or 2 at an end, or 1 for a single row.
  rows = 3 - (np.arange(height) == 0) - (np.arange(height) == height - 1)
  cols = 3 - (np.arange(width) == 0) - (np.arange(width) == width - 1)
  expected = channels * rows[:, None] * cols[None, :]
  if min(height, width) >= 3:
    assert (expected[0, 0], expected[0, 1], expected[1, 1]) == (4 * 32, 6 * 32, 9 * 32)
  np.testing.assert_allclose(out, np.broadcast_to(expected[None, :, :, None], out.shape),
                             rtol=2e-6)
  rng = np.random.default_rng(height * 100 + width)
  x = rng.normal(size=(3, height, width, channels)).astype(np.float32)
  kernel = (rng.normal(size=(3, 3, channels, features)) / np.sqrt(9 * channels)).astype(
      np.float32)
  out = np.asarray(jax.jit(conv.winograd_conv3x3)(jnp.asarray(x), jnp.asarray(kernel)))
  np.testing.assert_allclose(out, numpy_conv3x3(x, kernel), rtol=1e-4, atol=2e-5)
  assert out.dtype == np.float32 and out.shape == (3, height, width, features)


def test_winograd_kernel_transform_planted_taps():
  """Winograd's kernel transform ``G g G^T`` on planted kernels: a single tap ``(i, j)`` of
  channel pair ``(c, f)`` gives the outer product of ``G``'s columns ``i`` and ``j`` there and
  zeros elsewhere (its coefficients 1/4, 1/6, 1/12, 1/24 exactly to float32 rounding); random
  kernels give the float64 definition; it is elementwise arithmetic (no matrix products, which
  XLA:CPU ran as 3-long contractions far slower)."""
  g = np.asarray(conv._WINOGRAD_G, np.float64)
  for (i, j, c, f) in [(0, 0, 0, 0), (1, 1, 2, 1), (2, 0, 1, 2), (0, 2, 2, 0)]:
    kernel = np.zeros((3, 3, 3, 3), np.float32)
    kernel[i, j, c, f] = 1.0
    u = np.asarray(jax.jit(conv.winograd_kernel)(jnp.asarray(kernel)))
    expected = np.zeros((36, 3, 3))
    expected[:, c, f] = np.outer(g[:, i], g[:, j]).reshape(36)
    np.testing.assert_allclose(u, expected, rtol=1e-6, atol=0)
  kernel = np.random.default_rng(1).normal(size=(3, 3, 4, 5)).astype(np.float32)
  definition = np.einsum("ai,ijcf,bj->abcf", g, kernel.astype(np.float64), g).reshape(36, 4, 5)
  np.testing.assert_allclose(conv.winograd_kernel(jnp.asarray(kernel)), definition, rtol=1e-5,
                             atol=1e-6)
  assert "dot_general" not in str(jax.make_jaxpr(conv.winograd_kernel)(kernel))


def test_winograd_gradients_match_finite_differences_and_planted_sums():
  """Winograd's convolution differentiated (its JVP and backward pass are XLA's convolutions):
  the derivatives to input and kernel match finite differences of the Winograd forward pass
  (``check_grads``, reverse and forward mode, and second order); the gradient of the outputs'
  sum to an inside pixel is its channel's kernel sum over taps and outputs (planted), to the
  input alone (the kernel not differentiated) as to both; the backward pass holds XLA's
  convolutions."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(1, 5, 6, 4)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 4, 2)) * 0.3, jnp.float32)
  check_grads(jax.jit(conv.winograd_conv3x3), (x, kernel), order=2, modes=("rev", "fwd"),
              atol=5e-2, rtol=5e-2, eps=1e-2)
  total = lambda x, k: jnp.sum(conv.winograd_conv3x3(x, k))
  grad_x = jax.jit(jax.grad(total))(x, kernel)
  grad_both = jax.jit(jax.grad(total, argnums=(0, 1)))(x, kernel)
  planted = np.asarray(kernel).sum(axis=(0, 1, 3))  # [C]: every tap sees an inside pixel once
  np.testing.assert_allclose(grad_x[0, 1:-1, 1:-1], np.broadcast_to(planted, (3, 4, 4)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad_both[0], grad_x, rtol=1e-6, atol=1e-7)
  assert "conv_general_dilated" in str(jax.make_jaxpr(jax.grad(total))(x, kernel))


def test_algorithm_choice():
  """``conv3x3_algorithm``: at most 3 input channels are always the shifted multiply-adds; on a
  CPU ``"auto"`` picks Winograd for float32 with 32-64 input channels and XLA's convolution for
  16 or 128; for bfloat16, matrix products from 32 input channels and XLA's convolution below;
  an explicit choice is kept; an unknown name is refused, in
  ``Conv3x3``, the encoder's fields and ``dff_describer(conv=...)`` alike."""
  assert jax.default_backend() == "cpu"
  choose = conv.conv3x3_algorithm
  assert [choose("auto", c, jnp.float32) for c in (1, 3, 16, 32, 64, 128)] == [
      "shifted", "shifted", "xla", "winograd", "winograd", "xla"]
  assert [choose("auto", c, jnp.bfloat16) for c in (3, 16, 32, 128)] == [
      "shifted", "xla", "matmul", "matmul"]
  assert choose("xla", 32, jnp.float32) == "xla" and choose("winograd", 16, jnp.float32) == (
      "winograd") and choose("winograd", 1, jnp.float32) == "shifted"
  with pytest.raises(ValueError, match="Unknown convolution algorithm 'fft'"):
    choose("fft", 32, jnp.float32)
  with pytest.raises(ValueError, match="DFFEncoder.conv='fft'"):
    enc.DFFEncoder(features=(8,), conv="fft").init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  from dff_jax.alignment import features  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="DFFEncoder.conv='fft' is not one of"):
    features.dff_describer(conv="fft")  # the shipped encoder, asked for an unknown algorithm
  assert features.dff_describer(conv="xla").kind == "dff"


def test_auto_leaves_accelerators_to_xla(monkeypatch):
  """On a GPU or TPU backend ``"auto"`` always picks XLA's convolution (their own kernels are
  fast); images of at most 3 channels still take the shifted multiply-adds, and an explicit
  choice is kept."""
  monkeypatch.setattr(conv.jax, "default_backend", lambda: "gpu")
  choose = conv.conv3x3_algorithm
  assert [choose("auto", c, d) for c in (16, 32, 64, 128) for d in (jnp.float32, jnp.bfloat16)
          ] == ["xla"] * 8
  assert choose("auto", 3, jnp.float32) == "shifted"
  assert choose("winograd", 32, jnp.float32) == "winograd"


@pytest.mark.parametrize("mode,expected_xla_convs", [("auto", 2), ("xla", 5), ("winograd", 0)])
def test_encoder_layers_run_the_chosen_convolution(mode, expected_xla_convs):
  """The encoder's ``conv`` reaches every 3x3 layer: a point encoder of widths (16, 32, 64), two
  convolutions per level, has layers 1->16 (shifted multiply-adds), 16->16, 16->32 (XLA's under
  ``"auto"``), 32->32, 32->64, 64->64 (Winograd's under ``"auto"``), so its traced forward pass
  holds 2, 5 or 0 of XLA's convolutions for ``"auto"``, ``"xla"`` and ``"winograd"``; the
  pyramids of all three agree to float32 rounding."""
  module = enc.PointDFFEncoder(features=(16, 32, 64), convs_per_level=2, head_hidden=8,
                               descriptor_dim=4, conv=mode)
  images = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
  params = jax.eval_shape(module.init, jax.random.key(1), images)
  params = jax.tree.map(lambda s: jnp.full(s.shape, 0.0, s.dtype), params)
  jaxpr = str(jax.make_jaxpr(module.apply)(params, images))
  assert jaxpr.count("conv_general_dilated") == expected_xla_convs
  variables = jax.jit(enc.PointDFFEncoder(features=(16, 32, 64), head_hidden=8,
                                          descriptor_dim=4).init)(jax.random.key(1), images)
  levels = jax.jit(module.apply)(variables, images).levels
  reference = jax.jit(module.clone(conv="xla").apply)(variables, images).levels
  for ours, theirs in zip(levels, reference):
    np.testing.assert_allclose(ours, theirs, atol=1e-4 * float(jnp.max(jnp.abs(theirs))))
