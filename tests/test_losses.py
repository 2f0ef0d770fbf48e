"""Tests for dff_jax.losses on tiny inputs with known answers."""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dff_jax import losses

# Jitted entry points (one compile per test instead of op-by-op dispatch); jit == no-jit is
# checked separately below.
patch_loss = jax.jit(losses.patch_classification_loss,
                     static_argnames=("logit_scale", "num_pixels_per_image"))
info_nce = jax.jit(losses.info_nce_loss, static_argnums=(5,), static_argnames=("temperature",))

# Patch problem: P = 4 patches, D = 4, vertices 0..7, S = 3 segmentations.
P, D, V, S = 4, 4, 8, 3
# Segmentation s puts vertex v into patch (v + s) % P (segmentation 2: vertex 7 in no patch).
PATCH_TABLE = np.stack([(np.arange(V) + s) % P for s in range(S)]).astype(np.int32)
PATCH_TABLE[2, 7] = -1


def _vertex_ids(key, batch=2, height=4, width=6, background=0.25):
  ids = jax.random.randint(key, (batch, height, width), 0, V)
  drop = jax.random.uniform(jax.random.fold_in(key, 1), ids.shape) < background
  return jnp.where(drop, -1, ids).astype(jnp.int32)


def _perfect(vertex_ids, scale=50.0):
  """Descriptors one-hot on the segmentation-0 patch; classifier heads aligned with them."""
  patch0 = jnp.asarray(PATCH_TABLE[0])[jnp.maximum(vertex_ids, 0)]
  descriptors = jax.nn.one_hot(patch0, D)  # [B, H, W, D] unit norm.
  weight = np.zeros((S, D, P), np.float32)
  for s in range(S):
    # Patch in segmentation s = (patch0 + s) % P, so head s maps one-hot dim d to (d + s) % P.
    for d in range(D):
      weight[s, d, (d + s) % P] = scale
  return descriptors, {"weight": jnp.asarray(weight), "bias": jnp.zeros((S, P))}


def test_perfect_descriptors_give_near_zero_loss_and_full_accuracy():
  vertex_ids = _vertex_ids(jax.random.key(0))
  descriptors, params = _perfect(vertex_ids)
  seg = jnp.array([0, 2], jnp.int32)
  loss, metrics = patch_loss(
      descriptors, vertex_ids, jnp.asarray(PATCH_TABLE), params, seg)
  assert float(loss) < 1e-6
  assert float(metrics["accuracy"]) == 1.0
  np.testing.assert_allclose(metrics["valid_fraction"], np.mean(np.asarray(vertex_ids) >= 0))
  # Label -1 (vertex 7 in segmentation 2) is ignored: counted pixels = valid pixels of seg 0
  # plus valid pixels of seg 2 that are not vertex 7, averaged over G.
  ids = np.asarray(vertex_ids)
  expected = ((ids >= 0).sum() + ((ids >= 0) & (ids != 7)).sum()) / 2
  np.testing.assert_allclose(metrics["num_classified"], expected)


def test_wrong_heads_give_high_loss():
  vertex_ids = _vertex_ids(jax.random.key(0))
  descriptors, params = _perfect(vertex_ids)
  # Use head 1's weights for segmentation 0: every pixel predicts the wrong patch.
  params = {"weight": params["weight"][jnp.array([1, 1, 2])], "bias": params["bias"]}
  loss, metrics = patch_loss(
      descriptors, vertex_ids, jnp.asarray(PATCH_TABLE), params, jnp.array([0]))
  assert float(loss) > 10.0
  assert float(metrics["accuracy"]) == 0.0


def test_uniform_logits_give_log_num_patches():
  vertex_ids = _vertex_ids(jax.random.key(1))
  descriptors = jax.random.normal(jax.random.key(2), vertex_ids.shape + (D,))
  params = {"weight": jnp.zeros((S, D, P)), "bias": jnp.zeros((S, P))}
  loss, _ = patch_loss(
      descriptors, vertex_ids, jnp.asarray(PATCH_TABLE), params, jnp.array([0, 1, 2]))
  np.testing.assert_allclose(loss, math.log(P), rtol=1e-6)


def test_loss_ignores_background_pixels():
  vertex_ids = _vertex_ids(jax.random.key(3))
  descriptors, params = _perfect(vertex_ids, scale=3.0)
  seg = jnp.array([1], jnp.int32)
  loss, _ = patch_loss(
      descriptors, vertex_ids, jnp.asarray(PATCH_TABLE), params, seg)
  # Scramble descriptors of background pixels: the loss must not change.
  noise = jax.random.normal(jax.random.key(4), descriptors.shape)
  scrambled = jnp.where((vertex_ids >= 0)[..., None], descriptors, noise)
  loss2, _ = patch_loss(
      scrambled, vertex_ids, jnp.asarray(PATCH_TABLE), params, seg)
  np.testing.assert_allclose(loss, loss2, rtol=1e-6)


def test_all_background_is_finite_zero():
  vertex_ids = -jnp.ones((1, 4, 4), jnp.int32)
  params = losses.init_patch_classifiers(jax.random.key(0), S, D, P)
  descriptors = jnp.ones((1, 4, 4, D)) * 0.5
  loss, metrics = patch_loss(
      descriptors, vertex_ids, jnp.asarray(PATCH_TABLE), params, jnp.array([0]))
  assert float(loss) == 0.0 and float(metrics["valid_fraction"]) == 0.0


def test_pixel_subsampling_matches_full_loss_when_all_selected():
  vertex_ids = _vertex_ids(jax.random.key(5), height=4, width=4)
  descriptors = jax.random.normal(jax.random.key(6), vertex_ids.shape + (D,))
  params = losses.init_patch_classifiers(jax.random.key(7), S, D, P, stddev=1.0)
  table, seg = jnp.asarray(PATCH_TABLE), jnp.array([0, 2])
  full, _ = patch_loss(descriptors, vertex_ids, table, params, seg)
  # N = H * W: every pixel is selected (in some order), same mean.
  sub, _ = patch_loss(descriptors, vertex_ids, table, params, seg,
                                            num_pixels_per_image=16, key=jax.random.key(8))
  np.testing.assert_allclose(full, sub, rtol=1e-5)
  # N > H * W: no subsampling at all (no key needed).
  more, _ = patch_loss(descriptors, vertex_ids, table, params, seg, num_pixels_per_image=100)
  np.testing.assert_allclose(full, more, rtol=1e-6)
  # N small: only valid pixels are classified, and N per image at most.
  _, metrics = patch_loss(descriptors, vertex_ids, table, params,
                                                jnp.array([0]), num_pixels_per_image=3,
                                                key=jax.random.key(8))
  assert float(metrics["num_classified"]) == 6.0
  with pytest.raises(ValueError, match="key"):
    losses.patch_classification_loss(descriptors, vertex_ids, table, params, seg,
                                     num_pixels_per_image=3)


def test_sample_valid_pixels_prefers_valid_and_masks_rest():
  valid = jnp.array([[True, False, True, False, False], [False] * 5])
  indices, mask = losses.sample_valid_pixels(jax.random.key(0), valid, 3)
  assert indices.shape == (2, 3)
  assert set(np.asarray(indices[0, :2]).tolist()) == {0, 2}
  np.testing.assert_array_equal(mask, [[True, True, False], [False, False, False]])


def test_sample_segmentation_ids_distinct_and_in_range():
  ids = losses.sample_segmentation_ids(jax.random.key(0), 10, 4)
  assert ids.shape == (4,) and ids.dtype == jnp.int32
  assert len(set(np.asarray(ids).tolist())) == 4 and np.all((ids >= 0) & (ids < 10))
  with pytest.raises(ValueError, match="G <= S"):
    losses.sample_segmentation_ids(jax.random.key(0), 3, 4)


def test_init_patch_classifiers_shapes():
  params = losses.init_patch_classifiers(jax.random.key(0), 5, 8, 7)
  assert params["weight"].shape == (5, 8, 7) and params["bias"].shape == (5, 7)
  np.testing.assert_allclose(np.std(params["weight"]), 8 ** -0.5, rtol=0.2)


def test_patch_loss_bad_shapes_raise():
  params = losses.init_patch_classifiers(jax.random.key(0), S, D, P)
  with pytest.raises(ValueError, match="vertex_ids"):
    losses.patch_classification_loss(jnp.zeros((1, 4, 4, D)), jnp.zeros((1, 4, 5), jnp.int32),
                                      jnp.asarray(PATCH_TABLE), params, jnp.array([0]))
  with pytest.raises(ValueError, match="classifier weight"):
    losses.patch_classification_loss(jnp.zeros((1, 4, 4, D + 1)),
                                     jnp.zeros((1, 4, 4), jnp.int32),
                                     jnp.asarray(PATCH_TABLE), params, jnp.array([0]))


def test_patch_loss_jit_and_gradients():
  vertex_ids = _vertex_ids(jax.random.key(9))
  descriptors = jax.random.normal(jax.random.key(10), vertex_ids.shape + (D,))
  params = losses.init_patch_classifiers(jax.random.key(11), S, D, P)
  table, seg = jnp.asarray(PATCH_TABLE), jnp.array([2, 0])

  def f(desc, prm):
    return losses.patch_classification_loss(desc, vertex_ids, table, prm, seg, logit_scale=5.0,
                                            num_pixels_per_image=8, key=jax.random.key(1))

  eager, eager_metrics = f(descriptors, params)
  jitted, jitted_metrics = jax.jit(f)(descriptors, params)
  np.testing.assert_allclose(eager, jitted, rtol=1e-5)
  np.testing.assert_allclose(eager_metrics["accuracy"], jitted_metrics["accuracy"])
  grads = jax.jit(jax.grad(lambda d, p: f(d, p)[0], argnums=(0, 1)))(descriptors, params)
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert float(jnp.abs(grads[1]["weight"]).sum()) > 0
  # Unselected segmentation 1 gets no gradient.
  assert float(jnp.abs(grads[1]["weight"][1]).sum()) == 0.0


# ----------------------------------------------------------------------------------------------
# InfoNCE
# ----------------------------------------------------------------------------------------------

H, W, K = 8, 8, 6


def _pair(key, batch=2):
  """Descriptor maps whose pixel (i, j) is the one-hot code of i * W + j (D = H * W)."""
  codes = jnp.eye(H * W).reshape(H, W, H * W)
  desc_a = jnp.broadcast_to(codes, (batch, H, W, H * W))
  # View b shows the same surface shifted by (+1, +2) pixels (x, y).
  desc_b = jnp.roll(desc_a, shift=(2, 1), axis=(1, 2))
  cols = jax.random.randint(key, (batch, K), 0, W - 1)
  rows = jax.random.randint(jax.random.fold_in(key, 1), (batch, K), 0, H - 2)
  # Distinct points: use a permutation of pixels per batch.
  flat = jnp.stack([jax.random.permutation(jax.random.fold_in(key, b), (H - 2) * (W - 1))[:K]
                    for b in range(batch)])
  rows, cols = flat // (W - 1), flat % (W - 1)
  points_a = jnp.stack([cols + 0.5, rows + 0.5], axis=-1).astype(jnp.float32)
  points_b = points_a + jnp.array([1.0, 2.0])
  valid = jnp.ones((batch, K), bool)
  return desc_a, desc_b, points_a, points_b, valid


def test_info_nce_perfect_correspondences_low_loss_full_accuracy():
  desc_a, desc_b, pa, pb, valid = _pair(jax.random.key(0))
  loss, metrics = info_nce(desc_a, desc_b, pa, pb, valid, temperature=0.05)
  assert float(loss) < 1e-6  # exp(-1 / 0.05) * (K - 1) ~ 1e-8.
  assert float(metrics["accuracy"]) == 1.0
  np.testing.assert_allclose(metrics["positive_similarity"], 1.0, rtol=1e-6)


def test_info_nce_uniform_descriptors_give_log_k():
  desc_a, desc_b, pa, pb, valid = _pair(jax.random.key(0))
  const = jnp.ones_like(desc_a) / jnp.sqrt(desc_a.shape[-1])
  loss, _ = info_nce(const, const, pa, pb, valid, temperature=0.1)
  np.testing.assert_allclose(loss, math.log(K), rtol=1e-5)


def test_info_nce_swapping_correspondences_raises_loss():
  desc_a, desc_b, pa, pb, valid = _pair(jax.random.key(1))
  loss, _ = info_nce(desc_a, desc_b, pa, pb, valid, temperature=0.1)
  swapped_b = pb[:, jnp.array([1, 0, 3, 2, 5, 4])]
  loss_swapped, metrics = info_nce(desc_a, desc_b, pa, swapped_b, valid, 0.1)
  assert float(loss_swapped) > float(loss) + 5.0
  assert float(metrics["accuracy"]) == 0.0


def test_info_nce_masked_points_are_ignored():
  desc_a, desc_b, pa, pb, valid = _pair(jax.random.key(2))
  valid = valid.at[:, :2].set(False)
  loss, metrics = info_nce(desc_a, desc_b, pa, pb, valid, temperature=0.1)
  # Corrupt the masked points (wrong partner, outside the image, NaN): nothing changes.
  pb_bad = pb.at[:, 0].set(pb[:, 3]).at[:, 1].set(jnp.array([100.0, jnp.nan]))
  loss2, metrics2 = info_nce(desc_a, desc_b, pa, pb_bad, valid, temperature=0.1)
  np.testing.assert_allclose(loss, loss2, rtol=1e-6)
  np.testing.assert_allclose(metrics["valid_fraction"], (K - 2) / K)
  # Only K - 2 = 4 candidates remain, so the loss equals that of the 4 valid points alone.
  loss4, _ = info_nce(desc_a, desc_b, pa[:, 2:], pb[:, 2:], valid[:, 2:], 0.1)
  np.testing.assert_allclose(loss, loss4, rtol=1e-6)
  # Points outside the image are dropped even if marked valid.
  out = info_nce(desc_a, desc_b, pa, pb_bad, jnp.ones_like(valid), 0.1)[1]
  np.testing.assert_allclose(out["valid_fraction"], (K - 1) / K)


def test_info_nce_all_masked_finite():
  desc_a, desc_b, pa, pb, valid = _pair(jax.random.key(3))
  loss, metrics = info_nce(desc_a, desc_b, pa, pb, jnp.zeros_like(valid), 0.1)
  assert float(loss) == 0.0
  g = jax.jit(jax.grad(
      lambda d: losses.info_nce_loss(d, desc_b, pa, pb, jnp.zeros_like(valid), 0.1)[0]))(desc_a)
  assert np.all(np.isfinite(g))


def test_info_nce_jit_and_gradients():
  key = jax.random.key(4)
  desc_a = jax.random.normal(key, (2, H, W, 5))
  desc_b = jax.random.normal(jax.random.fold_in(key, 1), (2, H, W, 5))
  _, _, pa, pb, valid = _pair(key)
  pb = pb + 0.3  # Sub-pixel: bilinear mixing.
  valid = valid.at[0, 3].set(False)

  def f(a, b, points_a, points_b):
    return losses.info_nce_loss(a, b, points_a, points_b, valid, temperature=0.2)

  eager = f(desc_a, desc_b, pa, pb)
  jitted = jax.jit(f)(desc_a, desc_b, pa, pb)
  np.testing.assert_allclose(eager[0], jitted[0], rtol=1e-5)
  grads = jax.jit(jax.grad(lambda *args: f(*args)[0], argnums=(0, 1, 2, 3)))(desc_a, desc_b, pa, pb)
  assert all(np.all(np.isfinite(g)) for g in grads)
  assert float(jnp.abs(grads[0]).sum()) > 0 and float(jnp.abs(grads[3]).sum()) > 0


def test_info_nce_bad_input_raises():
  desc_a, desc_b, pa, pb, valid = _pair(jax.random.key(0))
  with pytest.raises(ValueError, match="temperature"):
    losses.info_nce_loss(desc_a, desc_b, pa, pb, valid, temperature=0.0)
  with pytest.raises(ValueError, match="valid"):
    losses.info_nce_loss(desc_a, desc_b, pa, pb, valid[:, :3], temperature=0.1)


# ----------------------------------------------------------------------------------------------
# Combined
# ----------------------------------------------------------------------------------------------


def test_combined_loss_weights_and_metrics():
  key = jax.random.key(5)
  desc_a, desc_b, pa, pb, valid = _pair(key)
  vertex_ids = jnp.stack(
      [_vertex_ids(key, 2, H, W), _vertex_ids(jax.random.fold_in(key, 9), 2, H, W)],
      axis=1)  # [B, V=2, H, W]
  batch = {"vertex_ids": vertex_ids, "points_a_px": pa, "points_b_px": pb, "valid": valid}
  dim = desc_a.shape[-1]
  params = losses.init_patch_classifiers(jax.random.key(6), S, dim, P)
  table, seg = jnp.asarray(PATCH_TABLE), jnp.array([0, 1])
  config = losses.default_loss_config()
  config.update(dict(patch_weight=0.5, info_nce_weight=2.0, temperature=0.1,
                     num_pixels_per_image=None, logit_scale=3.0))
  total, metrics = jax.jit(lambda a, b, bt: losses.combined_loss(
      config, a, b, bt, patch_table=table, classifier_params=params, segmentation_ids=seg))(
          desc_a, desc_b, batch)
  patch, _ = patch_loss(
      jnp.concatenate([desc_a, desc_b]), jnp.concatenate([vertex_ids[:, 0], vertex_ids[:, 1]]),
      table, params, seg, logit_scale=3.0)
  nce, _ = info_nce(desc_a, desc_b, pa, pb, valid, 0.1)
  np.testing.assert_allclose(total, 0.5 * patch + 2.0 * nce, rtol=1e-5)
  assert {"loss", "patch/loss", "patch/accuracy", "info_nce/loss", "info_nce/accuracy"} <= set(
      metrics)
  # Only InfoNCE: no patch inputs needed, no patch metrics.
  only = {"patch_weight": 0.0, "info_nce_weight": 1.0, "temperature": 0.1}
  total2, metrics2 = jax.jit(lambda a, b, bt: losses.combined_loss(only, a, b, bt))(
      desc_a, desc_b, batch)
  np.testing.assert_allclose(total2, nce, rtol=1e-6)
  assert not any(k.startswith("patch/") for k in metrics2)
  with pytest.raises(ValueError, match="patch_table"):
    losses.combined_loss({"patch_weight": 1.0}, desc_a, desc_b, batch)
  with pytest.raises(ValueError, match="weight"):
    losses.combined_loss(ml_collections.ConfigDict({"patch_weight": 0.0}), desc_a, desc_b, batch)


def test_default_loss_config_holds_the_paper_setting():
  """Every field train.py reads, with the documented defaults (paper loss only)."""
  assert losses.default_loss_config().to_dict() == dict(
      patch_weight=1.0, info_nce_weight=0.0, temperature=0.07, logit_scale=10.0,
      num_pixels_per_image=2048, num_segmentations_per_step=4)


def test_segmentation_ids_accept_one_and_all_and_refuse_outside():
  key = jax.random.PRNGKey(0)
  assert losses.sample_segmentation_ids(key, 5, 1).shape == (1,)
  every = np.asarray(losses.sample_segmentation_ids(key, 5, 5))
  assert every.dtype == np.int32 and sorted(every.tolist()) == [0, 1, 2, 3, 4]
  for bad in (0, 6):
    with pytest.raises(ValueError, match=rf"need 1 <= G <= S, got G={bad}, S=5"):
      losses.sample_segmentation_ids(key, 5, bad)


def test_combined_loss_fields_left_out_take_their_documented_defaults():
  """A config without a field (a dict, or an object with attributes) gets the documented
  default: patch_weight 1, info_nce_weight 0, logit_scale 1, all pixels; and the error for two
  zero weights names both."""
  import types  # pylint: disable=g-import-not-at-top
  key = jax.random.key(7)
  desc_a, desc_b, pa, pb, valid = _pair(key)
  vertex_ids = jnp.stack([_vertex_ids(key, 2, H, W), _vertex_ids(key, 2, H, W)], axis=1)
  batch = {"vertex_ids": vertex_ids, "points_a_px": pa, "points_b_px": pb, "valid": valid}
  params = losses.init_patch_classifiers(jax.random.key(8), S, desc_a.shape[-1], P)
  table, seg = jnp.asarray(PATCH_TABLE), jnp.array([0, 1])
  expected, _ = patch_loss(
      jnp.concatenate([desc_a, desc_b]), jnp.concatenate([vertex_ids[:, 0], vertex_ids[:, 1]]),
      table, params, seg, logit_scale=1.0)
  for config in ({}, types.SimpleNamespace()):
    total, metrics = losses.combined_loss(config, desc_a, desc_b, batch, patch_table=table,
                                          classifier_params=params, segmentation_ids=seg)
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    assert total.dtype == jnp.float32 and not any(k.startswith("info_nce/") for k in metrics)
  with pytest.raises(ValueError, match=r"^combined_loss: set patch_weight and/or info_nce_weight"):
    losses.combined_loss({"patch_weight": 0.0}, desc_a, desc_b, batch)


def test_combined_loss_one_view_subsampling_and_its_errors():
  """desc_b=None trains the patch loss on view 0 alone; config.num_pixels_per_image reaches the
  patch loss (with the key); each missing patch input and a missing second view for InfoNCE are
  refused with their own message."""
  key = jax.random.key(9)
  desc_a, desc_b, pa, pb, valid = _pair(key)
  vertex_ids = jnp.stack([_vertex_ids(key, 2, H, W),
                          _vertex_ids(jax.random.fold_in(key, 1), 2, H, W)], axis=1)
  batch = {"vertex_ids": vertex_ids, "points_a_px": pa, "points_b_px": pb, "valid": valid}
  params = losses.init_patch_classifiers(jax.random.key(10), S, desc_a.shape[-1], P)
  table, seg = jnp.asarray(PATCH_TABLE), jnp.array([0, 1])
  inputs = dict(patch_table=table, classifier_params=params, segmentation_ids=seg)
  total, _ = losses.combined_loss({"logit_scale": 1.0}, desc_a, None, batch, **inputs)
  expected, _ = patch_loss(desc_a, vertex_ids[:, 0], table, params, seg, logit_scale=1.0)
  np.testing.assert_allclose(total, expected, rtol=1e-6)
  # Subsampling: 3 pixels per image (4 images) instead of every face pixel.
  sub_key = jax.random.key(11)
  total, metrics = losses.combined_loss({"num_pixels_per_image": 3}, desc_a, desc_b, batch,
                                        key=sub_key, **inputs)
  expected, expected_metrics = patch_loss(
      jnp.concatenate([desc_a, desc_b]), jnp.concatenate([vertex_ids[:, 0], vertex_ids[:, 1]]),
      table, params, seg, num_pixels_per_image=3, key=sub_key)
  np.testing.assert_allclose(total, expected, rtol=1e-6)
  assert float(metrics["patch/num_classified"]) == float(expected_metrics["num_classified"]) <= 12
  message = r"^combined_loss: patch_weight > 0 needs patch_table, classifier_params and " \
            r"segmentation_ids\.$"
  for missing in inputs:
    with pytest.raises(ValueError, match=message):
      losses.combined_loss({}, desc_a, desc_b, batch,
                           **{k: v for k, v in inputs.items() if k != missing})
  with pytest.raises(ValueError, match=r"^combined_loss: info_nce_weight > 0 needs desc_b "
                                       r"\(the second view\)\.$"):
    losses.combined_loss({"patch_weight": 0.0, "info_nce_weight": 1.0}, desc_a, None, batch)


def test_sample_valid_pixels_is_random_among_valid_and_accepts_one():
  """Different keys pick different valid pixels (the draw is uniform, not the first N), one pixel
  is a valid request, and the mask marks the valid ones."""
  valid = jnp.asarray(np.arange(40) % 3 != 0)[None].repeat(2, axis=0)  # [2, 40]
  picks = {tuple(np.asarray(losses.sample_valid_pixels(jax.random.key(s), valid, 5)[0][0]))
           for s in range(6)}
  assert len(picks) > 1
  indices, mask = losses.sample_valid_pixels(jax.random.key(0), valid, 1)
  assert indices.shape == (2, 1) and bool(jnp.all(mask))
  assert bool(jnp.all(jnp.take_along_axis(valid, indices, axis=-1)))


def test_info_nce_default_temperature_and_point_fields():
  """The default temperature is 0.07; a point field gives the loss of its dense map when the
  correspondences sit at pixel centres."""
  from dff_jax import descriptor_fields  # pylint: disable=g-import-not-at-top
  from dff_jax import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
  key = jax.random.key(12)
  desc_a, desc_b, pa, pb, valid = _pair(key)
  default, _ = info_nce(desc_a, desc_b, pa, pb, valid)
  explicit, _ = info_nce(desc_a, desc_b, pa, pb, valid, 0.07)
  np.testing.assert_allclose(default, explicit, rtol=1e-6)
  module = encoder_lib.encoder_from_config(dict(features=(4, 8), descriptor_dim=4, head="point",
                                                head_hidden=8, num_groups=2))
  images = jax.random.normal(key, (2, 16, 16, 1))
  variables = jax.jit(module.init)(jax.random.key(13), images)
  fields = jax.jit(module.apply)(variables, images)
  dense = jax.jit(descriptor_fields.to_dense_batch)(fields)
  centres = jnp.floor(jax.random.uniform(key, (2, 6, 2), minval=0, maxval=16)) + 0.5
  ok = jnp.ones((2, 6), bool)
  from_fields, _ = info_nce(fields, fields, centres, centres[:, ::-1], ok, 0.1)
  from_dense, _ = info_nce(dense, dense, centres, centres[:, ::-1], ok, 0.1)
  np.testing.assert_allclose(from_fields, from_dense, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Planted answers computed from the documented formulas (NumPy), and every guard's message
# ----------------------------------------------------------------------------------------------


def _np_log_softmax(x, axis):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def _np_info_nce(fa, fb, valid, temperature):
  """Symmetric InfoNCE of one pair from its definition: fa, fb [K, D] unit, valid [K]."""
  fa, fb = fa[valid], fb[valid]
  logits = fa @ fb.T / temperature
  ce_ab = -np.diag(_np_log_softmax(logits, 1))
  ce_ba = -np.diag(_np_log_softmax(logits, 0))
  target = np.arange(len(fa))
  correct = (logits.argmax(1) == target).sum() + (logits.argmax(0) == target).sum()
  return ce_ab.sum() + ce_ba.sum(), correct, np.diag(fa @ fb.T).sum(), len(fa)


def test_info_nce_equals_its_definition_in_both_directions():
  """Random unit descriptors at pixel centres: loss, accuracy and positive similarity equal the
  documented symmetric InfoNCE (a->b over rows, b->a over columns), with a masked point and an
  image whose a->b and b->a accuracies differ; one valid point alone is its own match."""
  rng = np.random.default_rng(1)  # a seed whose image 0 has different a->b and b->a matches
  batch, height, width, dim, k = 2, 5, 7, 3, 6
  desc = rng.normal(size=(2, batch, height, width, dim)).astype(np.float32)
  desc /= np.linalg.norm(desc, axis=-1, keepdims=True)
  cells = np.stack([rng.permutation(height * width)[:k] for _ in range(2 * batch)])
  cells = cells.reshape(2, batch, k)
  points = np.stack([cells % width + 0.5, cells // width + 0.5], axis=-1).astype(np.float32)
  valid = np.ones((batch, k), bool)
  valid[1, 4] = False
  temperature = 0.3
  loss, metrics = info_nce(jnp.asarray(desc[0]), jnp.asarray(desc[1]), jnp.asarray(points[0]),
                           jnp.asarray(points[1]), jnp.asarray(valid), temperature)
  total, correct, positive, count = 0.0, 0, 0.0, 0
  directional = []
  for b in range(batch):
    fa = desc[0, b][cells[0, b] // width, cells[0, b] % width]
    fb = desc[1, b][cells[1, b] // width, cells[1, b] % width]
    t, c, p, n = _np_info_nce(fa, fb, valid[b], temperature)
    total, correct, positive, count = total + t, correct + c, positive + p, count + n
    logits = fa[valid[b]] @ fb[valid[b]].T
    directional.append(((logits.argmax(1) == np.arange(n)).sum(),
                        (logits.argmax(0) == np.arange(n)).sum()))
  assert any(ab != ba for ab, ba in directional)  # the planted pairs tell the directions apart
  np.testing.assert_allclose(loss, total / (2 * count), rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], correct / (2 * count), rtol=1e-6)
  np.testing.assert_allclose(metrics["positive_similarity"], positive / count, rtol=1e-5)
  np.testing.assert_allclose(metrics["valid_fraction"], count / (batch * k), rtol=1e-6)
  # One valid point: no negatives, so it is matched both ways (accuracy 1, loss 0), and the
  # positive similarity is its own cosine.
  one = np.zeros((batch, k), bool)
  one[0, 2] = True
  loss1, metrics1 = info_nce(jnp.asarray(desc[0]), jnp.asarray(desc[1]), jnp.asarray(points[0]),
                             jnp.asarray(points[1]), jnp.asarray(one), temperature)
  fa = desc[0, 0][cells[0, 0, 2] // width, cells[0, 0, 2] % width]
  fb = desc[1, 0][cells[1, 0, 2] // width, cells[1, 0, 2] % width]
  np.testing.assert_allclose(loss1, 0.0, atol=1e-6)
  np.testing.assert_allclose(metrics1["accuracy"], 1.0)
  np.testing.assert_allclose(metrics1["positive_similarity"], fa @ fb, rtol=1e-5)


def test_info_nce_messages_name_the_expected_shapes():
  desc_a, desc_b, pa, pb, valid = _pair(jax.random.key(0))
  with pytest.raises(ValueError, match=r"desc_a and desc_b must both be \[B, H, W, D\], got"):
    losses.info_nce_loss(desc_a, desc_b[:, :, :-1], pa, pb, valid)
  with pytest.raises(ValueError, match=r"points_a_px and points_b_px must both be \[B=2, K, 2\]"):
    losses.info_nce_loss(desc_a, desc_b, pa, pb[:, :-1], valid)
  with pytest.raises(ValueError, match=r"valid must be \[B, K\] = \(2, 6\), got \(2, 3\)"):
    losses.info_nce_loss(desc_a, desc_b, pa, pb, valid[:, :3])


def test_init_patch_classifiers_refuses_empty_sizes_and_honours_stddev():
  for sizes in ((0, 4, 5), (3, 0, 5), (3, 4, 0)):
    with pytest.raises(ValueError, match=r"init_patch_classifiers needs positive sizes, got "
                       rf"S={sizes[0]}, D={sizes[1]}, P={sizes[2]}\."):
      losses.init_patch_classifiers(jax.random.key(0), *sizes)
  smallest = losses.init_patch_classifiers(jax.random.key(0), 1, 1, 1)
  assert smallest["weight"].shape == (1, 1, 1) and smallest["bias"].dtype == jnp.float32
  chosen = losses.init_patch_classifiers(jax.random.key(1), 4, 64, 16, stddev=0.01)
  assert chosen["weight"].dtype == jnp.float32
  np.testing.assert_allclose(np.std(chosen["weight"]), 0.01, rtol=0.1)


def test_sample_valid_pixels_takes_every_pixel_per_image_and_names_the_limit():
  """N = H * W is allowed (every pixel, valid ones first, per image); N > H * W is refused."""
  valid = jnp.asarray(np.array([[True] * 6, [False, False, True, False, True, False]]))
  indices, mask = losses.sample_valid_pixels(jax.random.key(3), valid, 6)
  for b in range(2):
    assert sorted(np.asarray(indices[b]).tolist()) == list(range(6))
    np.testing.assert_array_equal(mask[b], np.asarray(valid)[b][np.asarray(indices[b])])
  assert set(np.asarray(indices[1, :2]).tolist()) == {2, 4}
  with pytest.raises(ValueError, match=r"num_pixels must be in \[1, H\*W=6\], got 7"):
    losses.sample_valid_pixels(jax.random.key(3), valid, 7)


def test_patch_loss_equals_its_definition_and_counts_vertex_zero():
  """Random descriptors and heads: the loss and accuracy are the documented cross-entropy over
  labelled pixels and the selected segmentations (NumPy), with the default logit scale 1; a
  face labelled only with vertex 0 is a labelled face."""
  rng = np.random.default_rng(1)
  batch, height, width = 2, 3, 4
  vertex_ids = rng.integers(-1, V, size=(batch, height, width)).astype(np.int32)
  desc = rng.normal(size=(batch, height, width, D)).astype(np.float32)
  weight = rng.normal(size=(S, D, P)).astype(np.float32)
  bias = rng.normal(size=(S, P)).astype(np.float32)
  seg = np.array([2, 0], np.int32)
  params = {"weight": jnp.asarray(weight), "bias": jnp.asarray(bias)}
  loss, metrics = losses.patch_classification_loss(
      jnp.asarray(desc), jnp.asarray(vertex_ids), jnp.asarray(PATCH_TABLE), params,
      jnp.asarray(seg))
  total, correct, count = 0.0, 0, 0
  for g in seg:
    for b, i, j in np.ndindex(batch, height, width):
      v = vertex_ids[b, i, j]
      if v < 0 or PATCH_TABLE[g, v] < 0:
        continue
      logits = desc[b, i, j] @ weight[g] + bias[g]
      total -= _np_log_softmax(logits, 0)[PATCH_TABLE[g, v]]
      correct += int(logits.argmax() == PATCH_TABLE[g, v])
      count += 1
  np.testing.assert_allclose(loss, total / count, rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], correct / count, rtol=1e-6)
  np.testing.assert_allclose(metrics["num_classified"], count / len(seg), rtol=1e-6)
  assert float(metrics["loss"]) == float(loss)
  zeros = np.full((1, height, width), -1, np.int32)
  zeros[0, 1, 2] = 0
  _, only_zero = losses.patch_classification_loss(
      jnp.asarray(desc[:1]), jnp.asarray(zeros), jnp.asarray(PATCH_TABLE), params,
      jnp.array([0]))
  assert float(only_zero["num_classified"]) == 1.0
  # One labelled pixel: the loss is its own cross-entropy (the mean over one, not halved).
  logits = desc[0, 1, 2] @ weight[0] + bias[0]
  np.testing.assert_allclose(only_zero["loss"], -_np_log_softmax(logits, 0)[PATCH_TABLE[0, 0]],
                             rtol=1e-5)
  # Subsampling one pixel per image finds that vertex-0 pixel too.
  _, sampled = losses.patch_classification_loss(
      jnp.asarray(desc[:1]), jnp.asarray(zeros), jnp.asarray(PATCH_TABLE), params,
      jnp.array([0]), num_pixels_per_image=1, key=jax.random.key(4))
  assert float(sampled["num_classified"]) == 1.0
  # Asking for every pixel is no subsampling: no key needed, the full loss.
  every, _ = losses.patch_classification_loss(
      jnp.asarray(desc), jnp.asarray(vertex_ids), jnp.asarray(PATCH_TABLE), params,
      jnp.asarray(seg), num_pixels_per_image=height * width)
  np.testing.assert_allclose(every, loss, rtol=1e-6)


def test_patch_loss_on_a_point_field_equals_its_dense_map_without_subsampling():
  """A point field classified at every pixel (no subsampling) gives the loss of its dense map."""
  from dff_jax import descriptor_fields  # pylint: disable=g-import-not-at-top
  from dff_jax import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
  key = jax.random.key(30)
  module = encoder_lib.encoder_from_config(dict(features=(4, 8), descriptor_dim=D, head="point",
                                                head_hidden=8, num_groups=2))
  images = jax.random.normal(key, (2, 8, 12, 1))
  fields = jax.jit(module.apply)(jax.jit(module.init)(jax.random.key(31), images), images)
  dense = jax.jit(descriptor_fields.to_dense_batch)(fields)
  vertex_ids = _vertex_ids(key, 2, 8, 12)
  params = losses.init_patch_classifiers(jax.random.key(32), S, D, P)
  args = (vertex_ids, jnp.asarray(PATCH_TABLE), params, jnp.array([0, 2]))
  loss = jax.jit(functools.partial(losses.patch_classification_loss, logit_scale=5.0))
  from_field, field_metrics = loss(fields, *args)  # jitted: eager dispatch took tens of seconds
  from_dense, dense_metrics = loss(dense, *args)
  np.testing.assert_allclose(from_field, from_dense, rtol=1e-5)
  np.testing.assert_allclose(field_metrics["num_classified"], dense_metrics["num_classified"])


def test_patch_loss_messages_name_the_problem():
  params = losses.init_patch_classifiers(jax.random.key(0), S, D, P)
  table, desc, ids = jnp.asarray(PATCH_TABLE), jnp.zeros((1, 4, 4, D)), jnp.zeros((1, 4, 4), jnp.int32)
  with pytest.raises(ValueError, match=r"descriptors must be \[B, H, W, D\], got shape \(4, 4, 4\)"):
    losses.patch_classification_loss(desc[0], ids, table, params, jnp.array([0]))
  bad_bias = dict(params, bias=jnp.zeros((S, P + 1)))
  with pytest.raises(ValueError, match=r"classifier bias must be \[S, P\] = \(3, 4\), got \(3, 5\)"):
    losses.patch_classification_loss(desc, ids, table, bad_bias, jnp.array([0]))
  with pytest.raises(ValueError, match=r"segmentation_ids must be \[G\], got shape \(1, 1\)"):
    losses.patch_classification_loss(desc, ids, table, params, jnp.array([[0]]))
  with pytest.raises(ValueError, match="^patch_classification_loss: num_pixels_per_image needs a "
                     "PRNG key.$"):
    losses.patch_classification_loss(desc, ids, table, params, jnp.array([0]),
                                     num_pixels_per_image=3)


def test_combined_loss_infonce_only_defaults_to_temperature_0_07_and_reports_its_total():
  """A config giving only info_nce_weight: the total is weight x InfoNCE at the documented
  default temperature 0.07 (not 0.1, not 1), and metrics["loss"] is that total."""
  desc_a, desc_b, pa, pb, valid = _pair(jax.random.key(21))
  desc_b = desc_b + 0.3 * jax.random.normal(jax.random.key(22), desc_b.shape)
  batch = {"points_a_px": pa, "points_b_px": pb, "valid": valid}
  total, metrics = losses.combined_loss({"patch_weight": 0.0, "info_nce_weight": 2.0},
                                        desc_a, desc_b, batch)
  at_default, _ = losses.info_nce_loss(desc_a, desc_b, pa, pb, valid, temperature=0.07)
  elsewhere, _ = losses.info_nce_loss(desc_a, desc_b, pa, pb, valid, temperature=1.07)
  assert abs(float(at_default) - float(elsewhere)) > 1e-3  # the planted pair tells them apart
  np.testing.assert_allclose(total, 2.0 * at_default, rtol=1e-6)
  assert float(metrics["loss"]) == float(total)
