"""Tests for dff_jax.sampling: pixel convention, border rule, gradients, jit/vmap, crops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from dff_jax import geometry, sampling


def _ramp_map(height=4, width=5, depth=3):
  """Map whose value at pixel (i, j) is (j, i, 10 i + j): linear in the pixel indices."""
  i, j = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  channels = [j, i, 10 * i + j, np.ones_like(i)][:depth]
  return np.stack(channels, -1).astype(np.float32)


def test_exact_values_at_pixel_centres():
  rng = np.random.default_rng(0)
  feature_map = rng.normal(size=(4, 6, 3)).astype(np.float32)
  i, j = np.meshgrid(np.arange(4), np.arange(6), indexing="ij")
  points = np.stack([j.ravel() + 0.5, i.ravel() + 0.5], -1).astype(np.float32)
  values, inside = sampling.bilinear_sample(jnp.asarray(feature_map), jnp.asarray(points))
  assert values.shape == (24, 3) and inside.shape == (24,) and inside.dtype == jnp.bool_
  np.testing.assert_array_equal(np.asarray(values), feature_map.reshape(24, 3))
  assert np.all(np.asarray(inside))


def test_linear_interpolation_between_centres():
  feature_map = jnp.asarray(_ramp_map())
  # Interior points: a linear map is reproduced exactly: value = (x - 0.5, y - 0.5, ...).
  points = jnp.array([[1.25, 0.5], [2.0, 1.75], [3.9, 2.6], [0.5, 3.5], [4.5, 0.5]])
  values, inside = sampling.bilinear_sample(feature_map, points)
  u, v = np.asarray(points[:, 0]) - 0.5, np.asarray(points[:, 1]) - 0.5
  np.testing.assert_allclose(np.asarray(values), np.stack([u, v, 10 * v + u], -1), atol=1e-5)
  assert np.all(np.asarray(inside))


def test_interpolation_of_random_map_matches_manual_formula():
  rng = np.random.default_rng(1)
  feature_map = rng.normal(size=(3, 3, 2)).astype(np.float32)
  values, _ = sampling.bilinear_sample(jnp.asarray(feature_map), jnp.array([[1.2, 1.9]]))
  fx, fy = 0.7, 1.4 - 1.0  # u = 0.7 between columns 0, 1; v = 1.4 between rows 1, 2.
  want = ((1 - fy) * ((1 - fx) * feature_map[1, 0] + fx * feature_map[1, 1])
          + fy * ((1 - fx) * feature_map[2, 0] + fx * feature_map[2, 1]))
  np.testing.assert_allclose(np.asarray(values[0]), want, rtol=1e-5)


def test_border_band_clamps_to_edge_and_outside_is_zero():
  feature_map = jnp.asarray(_ramp_map(height=4, width=5))
  points = jnp.array([
      [0.0, 0.0],  # corner: inside, clamped to pixel (0, 0).
      [0.2, 2.5],  # left band: clamped to column 0, row 2.
      [5.0, 4.0],  # opposite corner, closed interval: inside, pixel (3, 4).
      [4.8, 1.0],  # right band, between rows 0 and 1.
      [-1e-3, 2.0], [5.001, 2.0], [2.0, -0.01], [2.0, 4.01],  # outside.
      [np.nan, 1.0], [np.inf, 1.0],  # invalid: outside.
  ])
  values, inside = sampling.bilinear_sample(feature_map, points)
  np.testing.assert_array_equal(np.asarray(inside), [True] * 4 + [False] * 6)
  values = np.asarray(values)
  np.testing.assert_allclose(values[0], [0, 0, 0], atol=1e-6)
  np.testing.assert_allclose(values[1], [0, 2, 20], atol=1e-6)
  np.testing.assert_allclose(values[2], [4, 3, 34], atol=1e-6)
  np.testing.assert_allclose(values[3], [4, 0.5, 9], atol=1e-6)
  np.testing.assert_array_equal(values[4:], 0.0)


def test_single_pixel_map_and_leading_point_dims():
  feature_map = jnp.full((1, 1, 2), 7.0)
  points = jnp.array([[[0.1, 0.9], [0.5, 0.5]], [[1.0, 1.0], [1.5, 0.5]]])
  values, inside = sampling.bilinear_sample(feature_map, points)
  assert values.shape == (2, 2, 2) and inside.shape == (2, 2)
  np.testing.assert_array_equal(np.asarray(inside), [[True, True], [True, False]])
  np.testing.assert_allclose(np.asarray(values[..., 0]), [[7, 7], [7, 0]])


def test_accepts_numpy_and_lists():
  values, inside = sampling.bilinear_sample(np.ones((2, 2, 1), np.float32), [[1.0, 1.0]])
  np.testing.assert_allclose(np.asarray(values), [[1.0]])
  assert bool(inside[0])


def test_dtypes():
  feature_map = jnp.arange(12, dtype=jnp.uint8).reshape(2, 2, 3)
  values, _ = sampling.bilinear_sample(feature_map, jnp.array([[1.0, 1.0]]))
  assert values.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(values[0]), [4.5, 5.5, 6.5])
  values, _ = sampling.bilinear_sample(feature_map.astype(jnp.bfloat16), jnp.array([[1.0, 1.0]]))
  assert values.dtype == jnp.float32


def test_bad_shapes_raise_value_error():
  with pytest.raises(ValueError, match=r"\[H, W, D\]"):
    sampling.bilinear_sample(jnp.zeros((2, 4, 4, 3)), jnp.zeros((5, 2)))
  with pytest.raises(ValueError, match=r"\[\.\.\., 2\]"):
    sampling.bilinear_sample(jnp.zeros((4, 4, 3)), jnp.zeros((5, 3)))
  with pytest.raises(ValueError, match="crop_size"):
    sampling.crop_image(jnp.zeros((4, 4, 3)), jnp.array([0.0, 0, 4, 4]), 0)


def test_check_grads_map_and_points():
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    feature_map = jnp.asarray(rng.normal(size=(5, 6, 3)))
    # Away from pixel-centre lines (kinks) and the clamped band; one point outside.
    points = jnp.array([[1.3, 2.2], [3.7, 1.1], [4.2, 4.4], [-2.0, 1.0]])
    check_grads(jax.jit(lambda m, p: sampling.bilinear_sample(m, p)[0]), (feature_map, points),
                order=1, modes=("fwd", "rev"), eps=1e-4)


def test_gradients_zero_outside_and_finite_for_nan():
  feature_map = jnp.ones((3, 3, 2))
  points = jnp.array([[1.3, 1.2], [-4.0, 1.0], [np.nan, 1.0]])
  grad_map, grad_points = jax.grad(
      lambda m, p: jnp.sum(sampling.bilinear_sample(m, p)[0] * jnp.arange(1.0, 3.0)),
      argnums=(0, 1))(feature_map, points)
  grad_points = np.asarray(grad_points)
  assert np.all(np.isfinite(grad_points)) and np.all(np.isfinite(np.asarray(grad_map)))
  np.testing.assert_array_equal(grad_points[1:], 0.0)
  np.testing.assert_allclose(float(jnp.sum(grad_map)), 3.0, rtol=1e-6)  # weights sum to 1.


def test_gradient_with_respect_to_points_is_map_slope():
  feature_map = jnp.asarray(_ramp_map())
  jacobian = jax.jacobian(lambda p: sampling.bilinear_sample(feature_map, p)[0])(
      jnp.array([[2.2, 1.3]]))
  # d(value)/d(x, y) for channels (j, i, 10 i + j).
  np.testing.assert_allclose(np.asarray(jacobian[0, :, 0, :]), [[1, 0], [0, 1], [1, 10]],
                             atol=1e-5)


def test_jit_equals_no_jit_and_vmap():
  rng = np.random.default_rng(3)
  maps = jnp.asarray(rng.normal(size=(3, 6, 7, 4)).astype(np.float32))
  points = jnp.asarray(rng.uniform(-1, 8, (3, 10, 2)).astype(np.float32))
  want = [sampling.bilinear_sample(m, p) for m, p in zip(maps, points)]
  want_values = np.stack([np.asarray(w[0]) for w in want])
  want_inside = np.stack([np.asarray(w[1]) for w in want])
  jit_values, jit_inside = jax.jit(sampling.bilinear_sample)(maps[0], points[0])
  np.testing.assert_allclose(np.asarray(jit_values), want_values[0], atol=1e-6)
  np.testing.assert_array_equal(np.asarray(jit_inside), want_inside[0])
  for fn in (jax.vmap(sampling.bilinear_sample), sampling.bilinear_sample_batch,
             jax.jit(sampling.bilinear_sample_batch)):
    values, inside = fn(maps, points)
    np.testing.assert_allclose(np.asarray(values), want_values, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(inside), want_inside)


# ----------------------------------------------------------------------------------------------
# crop_image
# ----------------------------------------------------------------------------------------------


def _test_image(height=20, width=24):
  rng = np.random.default_rng(4)
  return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_crop_integer_aligned_box_equals_slicing():
  image = _test_image()
  box = jnp.array([5.0, 3.0, 13.0, 11.0])  # x0, y0, x1, y1: 8 x 8.
  crop = sampling.crop_image(jnp.asarray(image), box, 8)
  assert crop.shape == (8, 8, 3) and crop.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(crop), image[3:11, 5:13].astype(np.float32))


def test_crop_beyond_image_is_filled():
  image = _test_image(8, 8)
  crop = sampling.crop_image(jnp.asarray(image), jnp.array([-4.0, -4.0, 4.0, 4.0]), 8,
                             fill_value=-1.0)
  crop = np.asarray(crop)
  np.testing.assert_array_equal(crop[4:, 4:], image[:4, :4])
  np.testing.assert_array_equal(crop[:4], -1.0)
  np.testing.assert_array_equal(crop[:, :4], -1.0)


def test_crop_upscale_is_bilinear():
  image = jnp.asarray(_ramp_map(8, 8, 2))  # value (j, i) at pixel (i, j).
  crop = sampling.crop_image(image, jnp.array([2.0, 2.0, 4.0, 4.0]), 4)  # 2 px -> 4 px.
  centres = np.asarray(geometry.crop_pixel_centres_in_image(np.array([2.0, 2.0, 4.0, 4.0]), 4))
  np.testing.assert_allclose(np.asarray(crop), centres - 0.5, atol=1e-5)


@pytest.mark.parametrize("factor", [2, 4])
def test_crop_supersample_is_block_mean_for_integer_downscale(factor):
  image = _test_image(8 * factor, 8 * factor).astype(np.float32)
  box = jnp.array([0.0, 0.0, 8.0 * factor, 8.0 * factor])
  crop = sampling.crop_image(jnp.asarray(image), box, 8, supersample=factor)
  block_mean = image.reshape(8, factor, 8, factor, 3).mean(axis=(1, 3))
  np.testing.assert_allclose(np.asarray(crop), block_mean, atol=1e-3)
  plain = np.asarray(sampling.crop_image(jnp.asarray(image), box, 8))
  if factor == 4:  # Plain bilinear only averages the 2 x 2 pixels around each crop centre.
    centre_mean = image.reshape(8, 4, 8, 4, 3)[:, 1:3, :, 1:3].mean(axis=(1, 3))
    np.testing.assert_allclose(plain, centre_mean, atol=1e-3)
    assert not np.allclose(plain, block_mean, atol=1.0)


def test_crop_supersample_removes_aliasing_of_stripes():
  stripes = np.zeros((32, 32, 1), np.float32)
  stripes[:, ::2] = 1.0  # 1-pixel stripes: downscaling 4x should give uniform 0.5.
  box = jnp.array([0.0, 0.0, 32.0, 32.0])
  smooth = np.asarray(sampling.crop_image(jnp.asarray(stripes), box, 8, supersample=4))
  np.testing.assert_allclose(smooth, 0.5, atol=1e-5)


def test_crop_jit_vmap_and_gradient():
  image = jnp.asarray(_test_image(12, 12).astype(np.float32))
  boxes = jnp.array([[1.0, 1.0, 9.0, 9.0], [2.5, 0.5, 10.5, 8.5]])
  want = np.stack([np.asarray(sampling.crop_image(image, b, 4, supersample=2)) for b in boxes])
  crop_fn = lambda b: sampling.crop_image(image, b, 4, supersample=2)
  np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(crop_fn))(boxes)), want, atol=1e-4)
  grad = jax.grad(lambda b: jnp.sum(sampling.crop_image(image, b, 4)))(boxes[1] + 0.1)
  assert np.all(np.isfinite(np.asarray(grad))) and np.any(np.asarray(grad) != 0)


def test_error_messages_name_the_argument_and_the_shapes():
  """The one-line errors say which argument is wrong and what it got (mutation testing found
  that nothing checked the messages)."""
  with pytest.raises(ValueError, match=r"^feature_maps must have shape \[B, H, W, D\], got "
                                       r"\(4, 4, 3\)\.$"):
    sampling.bilinear_sample_batch(jnp.zeros((4, 4, 3)), jnp.zeros((4, 5, 2)))
  with pytest.raises(ValueError, match=r"^points_px batch 3 != feature_maps batch 2\.$"):
    sampling.bilinear_sample_batch(jnp.zeros((2, 4, 4, 3)), jnp.zeros((3, 5, 2)))
  with pytest.raises(ValueError, match=r"^image must have shape \[H, W, D\] .*got shape "
                                       r"\(4, 4\)\.$"):
    sampling.crop_image(jnp.zeros((4, 4)), jnp.array([0.0, 0, 4, 4]), 4)
  with pytest.raises(ValueError, match=r"^image must have H >= 1 and W >= 1"):
    sampling.crop_image(jnp.zeros((0, 4, 3)), jnp.array([0.0, 0, 4, 4]), 4)


def test_crop_fills_outside_the_image_with_zero_by_default():
  image = _test_image(8, 8)
  crop = np.asarray(sampling.crop_image(jnp.asarray(image), jnp.array([-4.0, -4.0, 4.0, 4.0]), 8))
  np.testing.assert_array_equal(crop[4:, 4:], image[:4, :4])
  np.testing.assert_array_equal(crop[:4], 0.0)
  np.testing.assert_array_equal(crop[:, :4], 0.0)


def test_crop_argument_checks():
  image, box = jnp.zeros((4, 4, 3)), jnp.array([0.0, 0, 4, 4])
  for bad in (1.5, 0, -2):
    with pytest.raises(ValueError, match=rf"^supersample must be a positive integer, got "
                                         rf"{bad!r}\.$"):
      sampling.crop_image(image, box, 4, supersample=bad)
  with pytest.raises(ValueError, match=r"^crop_size must be a positive integer, got 2\.5\.$"):
    sampling.crop_image(image, box, 2.5)
  with pytest.raises(ValueError, match=r"^box_xyxy must have shape \[4\] .*use jax\.vmap for a "
                                       r"batch of boxes\.$"):
    sampling.crop_image(image, jnp.zeros((2, 4)), 4)


def test_one_pixel_crop_is_the_value_at_the_box_centre():
  image = _ramp_map(6, 6)
  crop = sampling.crop_image(jnp.asarray(image), jnp.array([1.0, 2.0, 5.0, 6.0]), 1)
  assert crop.shape == (1, 1, 3)
  # Box centre (3, 4) in image pixels: between pixel centres, bilinear -> (j, i) = (2.5, 3.5).
  np.testing.assert_allclose(np.asarray(crop)[0, 0], [2.5, 3.5, 37.5], rtol=1e-6)


def test_empty_maps_are_refused_and_the_message_names_the_map():
  for shape in ((0, 4, 3), (4, 0, 3)):
    with pytest.raises(ValueError, match=rf"^feature_map must have H >= 1 and W >= 1, got shape "
                                         rf"\({shape[0]}, {shape[1]}, 3\)\.$"):
      sampling.bilinear_sample(jnp.zeros(shape), jnp.zeros((1, 2)))
  with pytest.raises(ValueError, match=r"^feature_map must have shape \[H, W, D\]"):
    sampling.bilinear_sample(jnp.zeros((4, 4)), jnp.zeros((1, 2)))


def test_one_point_and_integer_points():
  feature_map = jnp.asarray(_ramp_map())
  values, inside = sampling.bilinear_sample(feature_map, jnp.array([2.0, 1.5]))  # shape [2]
  assert values.shape == (3,) and inside.shape == () and bool(inside)
  np.testing.assert_allclose(np.asarray(values), [1.5, 1.0, 11.5])
  from_int, _ = sampling.bilinear_sample(feature_map, jnp.array([[2, 1], [4, 3]], jnp.int32))
  from_float, _ = sampling.bilinear_sample(feature_map, jnp.array([[2.0, 1.0], [4.0, 3.0]]))
  assert from_int.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(from_int), np.asarray(from_float))


def test_half_precision_map_and_points_stay_half_precision():
  feature_map = jnp.asarray(_ramp_map(), jnp.float16)
  values, _ = sampling.bilinear_sample(feature_map, jnp.array([[1.5, 1.5]], jnp.float16))
  assert values.dtype == jnp.float16
  values, _ = sampling.bilinear_sample(feature_map, jnp.array([[1.5, 1.5]], jnp.float32))
  assert values.dtype == jnp.float32
  values, _ = sampling.bilinear_sample(feature_map.astype(jnp.float32),
                                       jnp.array([[1.5, 1.5]], jnp.float16))
  assert values.dtype == jnp.float32  # the wider of the two


def test_supersampled_crop_of_an_offset_box_is_the_block_mean():
  image = _test_image(24, 24).astype(np.float32)
  box = jnp.array([4.0, 8.0, 20.0, 24.0])  # 16 x 16 image pixels -> 4 x 4 crop, 4 x 4 blocks
  crop = np.asarray(sampling.crop_image(jnp.asarray(image), box, 4, supersample=4))
  block_mean = image[8:24, 4:20].reshape(4, 4, 4, 4, 3).mean(axis=(1, 3))
  np.testing.assert_allclose(crop, block_mean, atol=1e-3)
