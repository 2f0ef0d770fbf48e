"""Tests for dff_jax.encoder: shapes, unit norm, size errors, bf16, jit, gradients, configs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dff_jax import encoder as enc

TINY = dict(features=(8, 16), descriptor_dim=8, convs_per_level=1)


def _init(module, shape, seed=0):
  images = jax.random.normal(jax.random.key(seed), shape, jnp.float32)
  params = jax.jit(module.init)(jax.random.key(seed + 1), images)
  return params, images


def _init_with_output(module, shape, seed=0):
  """One compile for both: (output, params, images)."""
  images = jax.random.normal(jax.random.key(seed), shape, jnp.float32)
  out, params = jax.jit(module.init_with_output)(jax.random.key(seed + 1), images)
  return out, params, images


def _apply(module, params, images):
  return jax.jit(module.apply)(params, images)


@pytest.fixture(scope="module")
def tiny():
  """(module, params, images [2, 16, 16, 1], jitted apply), shared to compile once."""
  module = enc.DFFEncoder(**TINY)
  params, images = _init(module, (2, 16, 16, 1))
  return module, params, images, jax.jit(module.apply)


@pytest.mark.parametrize("upsample,channels", [("nearest", 3), ("transpose", 1)])
def test_output_shape_dtype_and_unit_norm(upsample, channels):
  module = enc.DFFEncoder(**TINY, upsample=upsample)
  out, _, _ = _init_with_output(module, (2, 16, 24, channels))
  assert out.shape == (2, 16, 24, 8)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)


def test_three_levels_strided_downsample_and_options():
  module = enc.DFFEncoder(features=(8, 16, 24), descriptor_dim=4, convs_per_level=1,
                          downsample="strided_conv", norm="layer", activation="gelu")
  out, _, _ = _init_with_output(module, (1, 8, 12, 1))
  assert out.shape == (1, 8, 12, 4)
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)


def test_default_tiny_unit_norm_and_depends_on_position(tiny):
  """Unit norm everywhere; descriptors differ across pixels (not a degenerate constant map)."""
  _, params, images, apply = tiny
  out = np.asarray(apply(params, images))
  assert out.shape == (2, 16, 16, 8) and out.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
  assert np.std(out.reshape(-1, 8), axis=0).max() > 1e-2


@pytest.mark.parametrize("height,width,hint", [(15, 16, "height 15 -> try 12 or 16"),
                                               (16, 22, "width 22 -> try 20 or 24")])
def test_bad_size_names_working_sizes(height, width, hint):
  module = enc.DFFEncoder(features=(8, 16, 16), descriptor_dim=4, convs_per_level=1)
  with pytest.raises(ValueError, match="stride 4") as info:
    module.init(jax.random.key(0), jnp.zeros((1, height, width, 1)))
  assert hint in str(info.value)


def test_bad_fields_raise_value_error():
  with pytest.raises(ValueError, match="upsample"):
    enc.DFFEncoder(**TINY, upsample="cubic").init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  with pytest.raises(ValueError, match="images"):
    enc.DFFEncoder(**TINY).init(jax.random.key(0), jnp.zeros((8, 8, 1)))


def test_bfloat16_activations_float32_params_and_output(tiny):
  _, params, images, apply = tiny
  module16 = enc.DFFEncoder(**TINY, dtype=jnp.bfloat16)
  params16 = jax.eval_shape(module16.init, jax.random.key(1), images)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params16))
  out16 = _apply(module16, params, images)
  assert out16.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(out16, axis=-1), 1.0, atol=1e-5)
  out32 = apply(params, images)
  # Same parameters: bf16 activations keep descriptors close in direction.
  cosine = np.sum(np.asarray(out16) * np.asarray(out32), axis=-1)
  assert np.mean(cosine) > 0.95


def test_jit_matches_no_jit(tiny):
  module, params, images, apply = tiny
  with jax.disable_jit():
    eager = module.apply(params, images)
  jitted = apply(params, images)
  np.testing.assert_allclose(eager, jitted, atol=1e-5)


def test_gradients_finite_and_nonzero(tiny):
  module, params, images, _ = tiny
  target = jax.random.normal(jax.random.key(5), (2, 16, 16, 8))

  def loss(p, x):
    return jnp.mean(jnp.sum(module.apply(p, x) * target, axis=-1))

  grads_p, grads_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, images)
  leaves = jax.tree_util.tree_leaves(grads_p)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0
  assert np.all(np.isfinite(grads_x))


def test_l2_normalize_safe_at_zero():
  x = jnp.zeros((3, 4))
  y = enc.l2_normalize(x)
  assert np.all(y == 0)
  g = jax.grad(lambda v: jnp.sum(enc.l2_normalize(v) * jnp.arange(4.0)))(x)
  assert np.all(np.isfinite(g))
  v = jnp.array([[3.0, 4.0]])
  np.testing.assert_allclose(enc.l2_normalize(v), [[0.6, 0.8]], rtol=1e-6)


def test_bilinear_upsample_matches_jax_image_resize():
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 4))
  ours = enc._upsample_bilinear_2x(x)
  ref = jax.image.resize(x, (2, 6, 10, 4), "bilinear")
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_preprocess_images_gray_and_rgb():
  images = np.zeros((2, 4, 4, 3), np.uint8)
  images[0] = [255, 0, 0]
  images[1] = 255
  gray = enc.preprocess_images(images, channels=1)
  assert gray.shape == (2, 4, 4, 1) and gray.dtype == jnp.float32
  np.testing.assert_allclose(gray[0], (0.299 - 0.5) / 0.25, rtol=1e-5)
  np.testing.assert_allclose(gray[1], 2.0, rtol=1e-5)
  rgb = enc.preprocess_images(images, channels=3)
  assert rgb.shape == (2, 4, 4, 3)
  np.testing.assert_allclose(rgb[0, 0, 0], [2.0, -2.0, -2.0])
  with pytest.raises(ValueError, match="channels"):
    enc.preprocess_images(images, channels=2)
  # Grey input [..., 1] is the luma already: used as is, replicated for RGB networks.
  levels = np.array([0, 51, 128, 255], np.uint8).reshape(1, 2, 2, 1)
  expected = (levels / 255.0 - 0.5) / 0.25
  np.testing.assert_allclose(enc.preprocess_images(levels, channels=1), expected, atol=1e-6)
  np.testing.assert_allclose(enc.preprocess_images(levels, channels=3),
                             np.repeat(expected, 3, -1), atol=1e-6)
  with pytest.raises(ValueError, match="grey"):
    enc.preprocess_images(np.zeros((1, 4, 4, 2), np.uint8), channels=1)


def test_encoder_from_config_dict_and_configdict(tiny):
  config = ml_collections.ConfigDict(dict(
      features=(8, 16), descriptor_dim=8, convs_per_level=1, channels=1, dtype="bfloat16"))
  module = enc.encoder_from_config(config)
  assert module.features == (8, 16) and module.dtype == jnp.bfloat16
  out = jax.eval_shape(module.apply, tiny[1], tiny[2])
  assert out.shape == (2, 16, 16, 8) and out.dtype == jnp.float32
  nested = enc.encoder_from_config({"encoder": {"preset": "tiny"}})
  assert nested.features == enc.PRESETS["tiny"]["features"]
  assert enc.encoder_stride({"encoder": {"features": (8, 16, 32)}}) == 4
  assert enc.encoder_stride(module) == 2
  with pytest.raises(ValueError, match="dtype"):
    enc.encoder_from_config({"features": (8,), "dtype": "float64x"})
  with pytest.raises(ValueError, match="preset"):
    enc.encoder_from_config({"preset": "huge"})


def test_group_norm_batch_independent(tiny):
  """GroupNorm: an image's descriptors do not depend on the rest of the batch."""
  _, params, images, apply = tiny
  images = jnp.concatenate([images[:1], -images[:1]])
  full = apply(params, images)
  other = apply(params, images.at[1].set(3.0 * images[1] + 1.0))
  np.testing.assert_allclose(full[0], other[0], atol=1e-5)
  assert np.abs(np.asarray(full[1]) - np.asarray(other[1])).max() > 1e-3


def test_max_pool_matches_flax_max_pool():
  x = jax.random.normal(jax.random.key(0), (2, 6, 4, 3))
  np.testing.assert_array_equal(enc._max_pool_2x(x), nn.max_pool(x, (2, 2), strides=(2, 2)))


def test_remat_blocks_change_nothing_but_memory():
  """``remat=True`` (nn.remat per conv block): same parameter tree, outputs and gradients."""
  module = enc.DFFEncoder(features=(8, 16), descriptor_dim=8)
  rematerialised = module.clone(remat=True)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 1)), jnp.float32)
  params = jax.jit(module.init)(jax.random.key(0), images)
  assert (jax.tree.structure(params)
          == jax.tree.structure(jax.eval_shape(rematerialised.init, jax.random.key(0), images)))
  np.testing.assert_array_equal(jax.jit(module.apply)(params, images),
                                jax.jit(rematerialised.apply)(params, images))
  # Jitted: eager op-by-op dispatch of init, apply and grad costs most of a minute on 2 cores.
  grads = [jax.jit(jax.grad(lambda p, m=m: jnp.sum(m.apply(p, images)**3)))(params)
           for m in (module, rematerialised)]
  for a, b in zip(*map(jax.tree.leaves, grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert enc.encoder_from_config({"features": (8, 16), "remat": True}).remat


def test_group_norm_equals_flax_and_a_planted_answer():
  """The encoder's GroupNorm gives flax.linen.GroupNorm's values (same parameter names), and on a
  planted input (each group: values +-s around a mean m) exactly (x - m) / s * scale + bias."""
  encoder_lib = enc
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 8, 32)) * 3.0 + 1.0
  variables = {"params": {"scale": jnp.linspace(0.5, 2.0, 32), "bias": jnp.linspace(-1, 1, 32)}}
  ours = encoder_lib.GroupNorm(num_groups=8).apply(variables, x)
  reference = nn.GroupNorm(num_groups=8).apply(variables, x)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), atol=2e-5)
  assert set(encoder_lib.GroupNorm(num_groups=8).init(jax.random.PRNGKey(0), x)["params"]) == {
      "scale", "bias"}
  # Planted: a checkerboard of m + s and m - s in every channel: mean m, variance s^2.
  sign = np.where((np.arange(4)[:, None] + np.arange(4)[None]) % 2 == 0, 1.0, -1.0)
  m, s = 5.0, 2.0
  planted = jnp.asarray(np.broadcast_to((m + s * sign)[None, :, :, None], (1, 4, 4, 4)),
                        jnp.float32)
  out = encoder_lib.GroupNorm(num_groups=2, epsilon=0.0).apply(
      {"params": {"scale": jnp.full((4,), 3.0), "bias": jnp.full((4,), 0.5)}}, planted)
  np.testing.assert_allclose(np.asarray(out)[0, :, :, 0], 3.0 * sign + 0.5, atol=1e-5)


def test_convs_per_level_per_level_counts():
  """One count per level gives that many convolutions (and norms) in each level's blocks, the
  same module from a JSON list; a wrong length or a zero names the field."""
  module = enc.PointDFFEncoder(features=(4, 8, 8), descriptor_dim=4, head_hidden=8,
                               convs_per_level=(1, 2, 1))
  shapes = jax.eval_shape(module.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32))["params"]
  convs = {name: sorted(k for k in shapes[name] if k.startswith("Conv"))
           for name in ("encoder_0", "encoder_1", "encoder_2")}
  assert convs == {"encoder_0": ["Conv_0"], "encoder_1": ["Conv_0", "Conv_1"],
                   "encoder_2": ["Conv_0"]}
  assert shapes["encoder_1"]["Conv_1"]["kernel"].shape == (3, 3, 8, 8)
  from_json = enc.encoder_from_config(dict(features=[4, 8, 8], descriptor_dim=4, head="point",
                                           head_hidden=8, convs_per_level=[1, 2, 1]))
  assert from_json == module and hash(from_json) == hash(module)
  dense = enc.DFFEncoder(features=(4, 8), descriptor_dim=4, convs_per_level=(2, 1))
  shapes = jax.eval_shape(dense.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32))["params"]
  assert sorted(k for k in shapes["decoder_0"] if k.startswith("Conv")) == ["Conv_0", "Conv_1"]
  for bad in ((1, 2), (1, 0, 1)):
    with pytest.raises(ValueError, match="convs_per_level"):
      enc.encoder_from_config(dict(features=(4, 8, 8), convs_per_level=bad))


def test_every_config_field_reaches_the_module_and_presets_pick_their_head():
  """Each field of encoder_from_config's list is passed on (non-default values); the point
  preset builds a PointDFFEncoder, and asked for the dense head a U-Net without head_hidden;
  top-level features win over an encoder sub-config; strides and parameter counts of known
  trees."""
  fields = dict(features=[8, 16], descriptor_dim=4, convs_per_level=[1, 2], norm="layer",
                num_groups=4, activation="gelu", upsample="nearest", downsample="strided_conv",
                dtype="float16", remat=True, conv="xla", matmul_dtype="float32")
  module = enc.encoder_from_config(ml_collections.ConfigDict(fields))
  expected = dict(fields, features=(8, 16), convs_per_level=(1, 2), dtype=jnp.float16)
  assert type(module) is enc.DFFEncoder  # pylint: disable=unidiomatic-typecheck
  assert {name: getattr(module, name) for name in expected} == expected
  point = enc.encoder_from_config({"preset": "dff_point"})
  assert isinstance(point, enc.PointDFFEncoder) and point.head_hidden == 128
  assert point.features == (16, 32, 64, 128)
  dense = enc.encoder_from_config({"preset": "dff_point", "head": "dense"})
  assert not isinstance(dense, enc.PointDFFEncoder) and dense.features == (16, 32, 64, 128)
  assert enc.encoder_from_config({"features": [8, 16], "encoder": {"features": [4]}}).features == (
      8, 16)
  assert [enc.encoder_stride(f) for f in ([8], (8, 16, 32), (8, 16, 32, 64), [8] * 5)] == [
      1, 4, 8, 16]
  tree = {"a": jnp.zeros((3, 4)), "b": [np.zeros(5), jnp.zeros((2, 2, 2))]}
  assert enc.count_params(tree) == 25 and enc.count_params({}) == 0
  group_count = enc._group_count  # pylint: disable=protected-access
  assert [group_count(c, 8) for c in (12, 16, 6, 1)] == [4, 8, 2, 1]


def test_size_and_field_errors_name_what_works():
  """check_image_size names the nearest positive multiples (never 0) of each bad side, joined by
  '; ', and accepts any positive size at stride 1; bad widths and option names are refused
  with the field named."""
  enc.check_image_size(1, 1, 1)
  with pytest.raises(ValueError) as info:
    enc.check_image_size(5, 9, 4)
  assert ("height 5 -> try 4 or 8; width 9 -> try 8 or 12. Resize or pad the images, or use "
          "fewer levels.") in str(info.value)
  with pytest.raises(ValueError, match=r"height 3 -> try 8\."):
    enc.check_image_size(3, 8, 8)
  with pytest.raises(ValueError, match=r"height 0 -> try 1\."):
    enc.check_image_size(0, 4, 1)
  for features in ((8, 0), ()):
    with pytest.raises(ValueError, match=r"DFFEncoder.features must be a non-empty sequence of "
                       r"positive widths, got \(" + ", ".join(map(str, features))):
      enc.DFFEncoder(features=features)._check_fields()  # pylint: disable=protected-access
  for accepted in (dict(features=(1,), descriptor_dim=1),
                   dict(conv="winograd", matmul_dtype="float32")):
    enc.DFFEncoder(**accepted)._check_fields()  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="DFFEncoder.convs_per_level and descriptor_dim must be >= "
                     "1, got 2 and 0"):
    enc.DFFEncoder(descriptor_dim=0)._check_fields()  # pylint: disable=protected-access
  for name in ("norm", "activation", "upsample", "downsample"):
    with pytest.raises(ValueError, match=f"DFFEncoder.{name}='bad' is not one of"):
      enc.DFFEncoder(**{name: "bad"})._check_fields()  # pylint: disable=protected-access
  with pytest.raises(ValueError, match=r"^PointDFFEncoder expects images \[B, H, W, C\], got "
                     r"shape \(8, 8, 1\)"):
    enc.PointDFFEncoder(features=(8,)).init(jax.random.key(0), jnp.zeros((8, 8, 1)))


def test_levels_activations_dtypes_and_names_of_the_contracting_half():
  """A strided-conv point encoder in bfloat16 with bfloat16 parameters: every parameter is
  bfloat16, the stride-2 convolutions are ``down_<l>`` with 3 x 3 kernels and bfloat16 outputs
  (with float32 parameters too), and so are the levels;
  the level blocks of a two-level encoder end in the ReLU (outputs >= 0) while a one-level
  U-Net's only block hands its normalised pre-activations (both signs) to the head."""
  module = enc.PointDFFEncoder(features=(8, 16, 16), descriptor_dim=4, convs_per_level=1,
                               downsample="strided_conv", dtype=jnp.bfloat16,
                               param_dtype=jnp.bfloat16, head_hidden=8)
  images = jax.random.normal(jax.random.key(0), (1, 8, 8, 1))
  params = jax.eval_shape(module.init, jax.random.key(1), images)
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  assert params["params"]["down_1"]["kernel"].shape == (3, 3, 8, 16)
  assert params["params"]["down_2"]["kernel"].shape == (3, 3, 16, 16)
  field, state = jax.eval_shape(lambda p, x: module.apply(p, x, capture_intermediates=True),
                                params, images)
  assert [level.dtype for level in field.levels] == [jnp.dtype(jnp.bfloat16)] * 3
  for name in ("down_1", "down_2"):
    assert state["intermediates"][name]["__call__"][0].dtype == jnp.bfloat16
  # With float32 parameters too: the stride-2 convolutions compute in dtype, not the promotion.
  module32 = module.clone(param_dtype=jnp.float32)
  _, state = jax.eval_shape(lambda p, x: module32.apply(p, x, capture_intermediates=True),
                            jax.eval_shape(module32.init, jax.random.key(1), images), images)
  for name in ("down_1", "down_2"):
    assert state["intermediates"][name]["__call__"][0].dtype == jnp.bfloat16

  def block_outputs(features):
    net = enc.DFFEncoder(features=features, descriptor_dim=4, convs_per_level=1)
    variables = net.init(jax.random.key(2), images)
    _, state = net.apply(variables, images, capture_intermediates=True)
    return [np.asarray(state["intermediates"][f"encoder_{l}"]["__call__"][0])
            for l in range(len(features))]

  assert all(float(out.min()) >= 0.0 for out in block_outputs((8, 16)))
  assert float(block_outputs((8,))[0].min()) < 0.0


def test_remat_is_in_the_computation_and_preprocessing_defaults_to_grey():
  """remat=True puts a checkpoint (rematerialisation) into the traced computation, remat=False
  none; preprocess_images defaults to one grey channel and converts an RGB image of width 1 (so
  only the last axis tells its channels); a bad channel count is named in full."""
  images = jnp.zeros((1, 8, 8, 1))
  module = enc.DFFEncoder(features=(8, 16), descriptor_dim=4, convs_per_level=1)
  params = jax.eval_shape(module.init, jax.random.key(0), images)
  for remat, found in ((True, True), (False, False)):
    text = str(jax.make_jaxpr(module.clone(remat=remat).apply)(params, images))
    assert (("checkpoint" in text) or ("remat" in text)) == found
  pixels = np.array([[[255, 0, 0]], [[0, 255, 0]], [[0, 0, 255]], [[255, 255, 255]]], np.uint8)
  grey = enc.preprocess_images(pixels)
  assert grey.shape == (4, 1, 1)
  np.testing.assert_allclose(np.asarray(grey)[:, 0, 0],
                             (np.array([0.299, 0.587, 0.114, 1.0]) - 0.5) / 0.25, atol=1e-5)
  with pytest.raises(ValueError, match=r"preprocess_images expects RGB images \[\.\.\., H, W, 3\] "
                     r"or grey ones \[\.\.\., H, W, 1\], got shape \(1, 4, 4, 2\)"):
    enc.preprocess_images(np.zeros((1, 4, 4, 2), np.uint8))
