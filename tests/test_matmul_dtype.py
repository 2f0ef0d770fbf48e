"""bfloat16 operands for the encoder's matrix products (``DFFEncoder.matmul_dtype``): the 3x3
convolution as three products against the definition, bfloat16 layers and heads against the
same computation in float64 on the rounded operands (planted), which layers the option reaches,
and the errors a user sees for a bad value."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from conftest import numpy_conv3x3
from dff_jax import convolution as conv
from dff_jax import descriptor_fields as fields_lib
from dff_jax import encoder as enc


def _rounded(x):
  """``x`` rounded to bfloat16 (round to nearest even), back in float64."""
  return np.asarray(jnp.asarray(x, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32),
                    np.float64)


def test_matmul_convolution_is_the_definition_and_exact_on_small_integers():
  """:func:`matmul_conv3x3` equals the float64 definition to float32 rounding on random
  inputs of odd sizes; on small integers (exact in bfloat16, sums exact in float32) its
  bfloat16 version equals the definition exactly, returned in float32."""
  x = jax.random.normal(jax.random.key(0), (2, 7, 5, 6))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 6, 4))
  np.testing.assert_allclose(jax.jit(conv.matmul_conv3x3)(x, kernel), numpy_conv3x3(x, kernel),
                             rtol=1e-5, atol=1e-5)
  xi = jax.random.randint(jax.random.key(2), (2, 6, 6, 40), -8, 9).astype(jnp.float32)
  ki = jax.random.randint(jax.random.key(3), (3, 3, 40, 8), -4, 5).astype(jnp.float32)
  out = jax.jit(conv.matmul_conv3x3, static_argnums=2)(xi.astype(jnp.bfloat16),
                                                        ki.astype(jnp.bfloat16), jnp.float32)
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out), numpy_conv3x3(xi, ki))
  # Without out_dtype the result has the input's dtype, rounded once from the float32 sums.
  out = jax.jit(conv.matmul_conv3x3)(xi.astype(jnp.bfloat16), ki.astype(jnp.bfloat16))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(out, np.float32),
                                np.asarray(jnp.asarray(numpy_conv3x3(xi, ki), jnp.bfloat16),
                                           np.float32))


def test_matmul_convolution_gradients():
  """Reverse- and forward-mode derivatives of the three-product convolution pass
  ``check_grads`` (finite differences)."""
  x = jax.random.normal(jax.random.key(4), (1, 5, 4, 3))
  kernel = jax.random.normal(jax.random.key(5), (3, 3, 3, 2))
  check_grads(conv.matmul_conv3x3, (x, kernel), order=1, modes=("fwd", "rev"), atol=1e-2,
              rtol=1e-2)


def test_a_bfloat16_layer_is_the_convolution_of_its_rounded_operands():
  """``Conv3x3(operand_dtype="bfloat16")`` on float32 features of 32 channels returns float32
  equal to the float64 convolution of the bfloat16-rounded input and kernel (to float32
  accumulation), and measurably unlike the float32 layer; a 1-channel (image) layer is left in
  float32, bit for bit."""
  x = jax.random.normal(jax.random.key(6), (2, 6, 6, 32))
  kernel = 0.1 * jax.random.normal(jax.random.key(7), (3, 3, 32, 16))
  variables = {"params": {"kernel": kernel}}
  layer = conv.Conv3x3(16, use_bias=False, operand_dtype="bfloat16")
  out = jax.jit(layer.apply)(variables, x)
  assert out.dtype == jnp.float32
  planted = numpy_conv3x3(_rounded(x), _rounded(kernel))
  scale = float(np.max(np.abs(planted)))
  np.testing.assert_allclose(out, planted, atol=2e-6 * scale)
  exact = numpy_conv3x3(x, kernel)
  assert float(np.max(np.abs(np.asarray(out) - exact))) > 50 * 2e-6 * scale
  image = jax.random.normal(jax.random.key(8), (2, 6, 6, 1))
  image_kernel = {"params": {"kernel": jax.random.normal(jax.random.key(9), (3, 3, 1, 4))}}
  np.testing.assert_array_equal(
      jax.jit(conv.Conv3x3(4, use_bias=False, operand_dtype="bfloat16").apply)(image_kernel,
                                                                              image),
      jax.jit(conv.Conv3x3(4, use_bias=False).apply)(image_kernel, image))


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def test_a_bfloat16_head_is_the_head_of_its_rounded_operands():
  """``head_apply(..., "bfloat16")`` equals the head computed in float64 with both products'
  operands (samples and hidden kernel; GELU outputs and output kernel) rounded to bfloat16,
  biases and normalisation exact; unit length."""
  keys = jax.random.split(jax.random.key(10), 5)
  features = jax.random.normal(keys[0], (50, 24))
  head = {"hidden_kernel": jax.random.normal(keys[1], (24, 16)) / 5,
          "hidden_bias": 0.1 * jax.random.normal(keys[2], (16,)),
          "out_kernel": jax.random.normal(keys[3], (16, 8)) / 4,
          "out_bias": 0.1 * jax.random.normal(keys[4], (8,))}
  jitted = jax.jit(fields_lib.head_apply, static_argnums=2)(head, features, "bfloat16")
  # Op by op too: XLA may fold a bfloat16 product's rounding into the float32 add under jit.
  eager = fields_lib.head_apply(head, features, "bfloat16")
  hidden = _gelu_tanh(_rounded(features) @ _rounded(head["hidden_kernel"])
                      + np.asarray(head["hidden_bias"], np.float64))
  raw = _rounded(hidden) @ _rounded(head["out_kernel"]) + np.asarray(head["out_bias"],
                                                                      np.float64)
  planted = raw / np.linalg.norm(raw, axis=-1, keepdims=True)
  for out in (jitted, eager):
    np.testing.assert_allclose(out, planted, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
  assert float(np.max(np.abs(np.asarray(fields_lib.head_apply(head, features)) - planted))) > 1e-4


def _operand_dtypes(jaxpr, names=("dot_general", "conv_general_dilated")):
  """Operand dtypes of every product equation of a closed jaxpr, nested ones included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in names:
      found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", None)
      if inner is not None:
        found += _operand_dtypes(inner if hasattr(inner, "eqns") else inner.jaxpr, names)
  return found


def test_the_encoder_option_reaches_every_product_but_the_images():
  """A point encoder of widths (16, 32, 64), two convolutions per level, read at points:
  with ``matmul_dtype="bfloat16"`` its products are XLA's convolutions for the 16-channel inputs
  (16->16, 16->32), three products each for the 32- and 64-channel ones (32->32, 32->64,
  64->64) and the head's two, all on bfloat16 operands: 2 + 9 + 2; the image's layer (1->16) is
  the float32 multiply-adds. Without the option no product has a bfloat16 operand. Descriptors
  stay float32 unit vectors, jitted or not, and close to the float32 encoder's."""
  images = jax.random.normal(jax.random.key(11), (2, 16, 16, 1))
  points = jax.random.uniform(jax.random.key(12), (2, 5, 2), minval=1.0, maxval=15.0)
  module = enc.encoder_from_config({"features": [16, 32, 64], "convs_per_level": 2,
                                    "head": "point", "head_hidden": 8, "descriptor_dim": 4,
                                    "matmul_dtype": "bfloat16"})
  variables = module.init(jax.random.key(13), images)

  def describe(m):
    return lambda v, x: fields_lib.query_batch(m.apply(v, x), points)[0]

  products = _operand_dtypes(jax.make_jaxpr(describe(module))(variables, images).jaxpr)
  bf16 = [p for p in products if "bfloat16" in p]
  assert len(bf16) == 13 and all(set(p) == {"bfloat16"} for p in bf16)
  plain = module.clone(matmul_dtype=None)
  assert not [p for p in _operand_dtypes(jax.make_jaxpr(describe(plain))(variables,
                                                                          images).jaxpr)
              if "bfloat16" in p]
  ours = jax.jit(describe(module))(variables, images)
  assert ours.dtype == jnp.float32
  np.testing.assert_allclose(ours, describe(module)(variables, images), atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-5)
  cosines = np.sum(np.asarray(ours) * np.asarray(jax.jit(describe(plain))(variables, images)),
                   axis=-1)
  assert cosines.min() > 0.99


def test_bad_values_are_refused_with_what_to_do():
  """An unknown ``matmul_dtype`` in an encoder config, a describer, ``resolve_aligner`` or the
  multi-view command, bfloat16 asked of SIFT descriptors or of Winograd's convolution (its
  transforms would run on rounded operands), each give one clear message."""
  from dff_jax.alignment import features, runner
  with pytest.raises(ValueError, match="DFFEncoder.matmul_dtype='int8' is not one of"):
    enc.encoder_from_config({"features": [8], "matmul_dtype": "int8"})
  with pytest.raises(ValueError, match="DFFEncoder.matmul_dtype='fp8'"):
    features.dff_describer(matmul_dtype="fp8")
  with pytest.raises(ValueError, match="--matmul_dtype='fp8' is not one of float32, bfloat16"):
    runner.resolve_aligner("fast", matmul_dtype="fp8")
  with pytest.raises(ValueError, match="applies to DFF descriptors only"):
    features.make_describer("sift", None, "bfloat16")
  with pytest.raises(ValueError, match="needs float32 products"):
    enc.encoder_from_config({"features": [8], "conv": "winograd", "matmul_dtype": "bfloat16"})
  with pytest.raises(ValueError, match="Winograd's convolution needs float32 operands, got "
                     "bfloat16: use conv='matmul' or 'auto' with bfloat16 products"):
    conv.Conv3x3(4, algorithm="winograd", operand_dtype="bfloat16").init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 32)))
  from experiments import align_flags
  with pytest.raises(SystemExit) as exit_info:
    align_flags.run_multiview(types.SimpleNamespace(mirror=False, matmul_dtype="bfloat16",
                                                    processes=1), "align")
  assert exit_info.value.code == 2


def test_the_shipped_fast_pair_with_bfloat16_products_on_the_portrait():
  """``Aligner.load(cascade="fast", matmul_dtype="bfloat16")``: the loaded encoder runs its
  products on bfloat16, and the demo portrait's face lands on the hand-placed reference points
  (within 6 px, as the shipped default's test asks)."""
  from dff_jax import Aligner, demo, image_io
  from conftest import ROOT
  aligner = Aligner.load(cascade="fast", matmul_dtype="bfloat16")
  assert aligner.cascade.spec.matmul_dtype == "bfloat16"
  crops = jnp.zeros((1,) + (aligner.config.crop_size,) * 2 + (aligner.cascade.channels,))
  products = _operand_dtypes(jax.make_jaxpr(aligner.cascade.describer)(crops).jaxpr)
  assert sum("bfloat16" in p for p in products) >= 3
  PORTRAIT = ROOT / "experiments" / "assets" / "astronaut.jpg"  # pylint: disable=invalid-name
  face, = aligner.align([image_io.read_image(PORTRAIT)])[0]
  errors = demo.reference_point_errors_px(face.landmarks_px)
  assert max(errors.values()) < 6.0, errors
