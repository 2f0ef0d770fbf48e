"""Tests of dff_jax.matching: nearest-descriptor matching, patch descriptors, statistics, PCA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dff_jax import matching


def _one_hot_map(height, width):
  """[H, W, H*W] map whose descriptor at pixel (i, j) is the one-hot of i * W + j."""
  return np.eye(height * width, dtype=np.float32).reshape(height, width, height * width)


def _shifted(map_a, dy, dx):
  """View B = view A moved by (dx, dy) pixels: B[i, j] = A[i - dy, j - dx]; mask of valid B."""
  height, width, depth = map_a.shape
  map_b = np.zeros_like(map_a)
  mask_b = np.zeros((height, width), bool)
  for i in range(height):
    for j in range(width):
      if 0 <= i - dy < height and 0 <= j - dx < width:
        map_b[i, j] = map_a[i - dy, j - dx]
        mask_b[i, j] = True
  return map_b, mask_b


def _centres(height, width):
  return np.asarray(matching.pixel_centres(height, width)).reshape(-1, 2)


def test_pixel_centres_follow_convention():
  centres = np.asarray(matching.pixel_centres(2, 3))
  assert centres.shape == (2, 3, 2)
  np.testing.assert_array_equal(centres[1, 2], [2.5, 1.5])  # pixel (i=1, j=2) -> (x, y)


def test_one_hot_descriptors_match_exactly_under_a_known_shift():
  map_a = _one_hot_map(8, 10)
  map_b, mask_b = _shifted(map_a, dy=2, dx=-3)
  points_a = _centres(8, 10)
  expected = points_a + np.asarray([-3.0, 2.0])
  seen = (expected[:, 0] > 0) & (expected[:, 0] < 10) & (expected[:, 1] > 0) & (
      expected[:, 1] < 8)
  matched, similarity, inside = matching.match_points(map_a, points_a, map_b, mask_b)
  matched = np.asarray(matched)
  assert np.all(np.asarray(inside))
  np.testing.assert_allclose(matched[seen], expected[seen], atol=1e-6)
  np.testing.assert_allclose(np.asarray(similarity)[seen], 1.0, atol=1e-6)
  errors = np.asarray(matching.match_errors_px(matched, expected))
  assert float(matching.pck_curve(errors[None], seen[None], np.asarray([0.0]))[0]) == 1.0
  # Matches only ever land on the mask, even for points whose partner is outside it.
  rows = (matched[:, 1] - 0.5).astype(int)
  cols = (matched[:, 0] - 0.5).astype(int)
  assert np.all(mask_b[rows, cols])


def test_sub_pixel_query_matches_the_nearest_pixel():
  map_a = _one_hot_map(6, 6)
  rng = np.random.default_rng(0)
  points = rng.uniform(0.6, 5.4, size=(50, 2)).astype(np.float32)
  matched, _, _ = matching.match_points(map_a, points, map_a, np.ones((6, 6), bool))
  nearest = np.floor(points) + 0.5
  np.testing.assert_allclose(np.asarray(matched), nearest, atol=1e-6)
  assert np.all(np.linalg.norm(np.asarray(matched) - points, axis=-1) <= np.sqrt(0.5) + 1e-6)


def test_shuffled_descriptors_give_poor_pck():
  height = width = 12
  map_a = _one_hot_map(height, width) + 0.05 * np.random.default_rng(1).normal(
      size=(height, width, height * width)).astype(np.float32)
  rng = np.random.default_rng(2)
  permutation = rng.permutation(height * width)
  shuffled = map_a.reshape(-1, height * width)[permutation].reshape(map_a.shape)
  points = _centres(height, width)
  good, _, _ = matching.match_points(map_a, points, map_a, np.ones((height, width), bool))
  bad, _, _ = matching.match_points(map_a, points, shuffled, np.ones((height, width), bool))
  valid = np.ones((1, points.shape[0]), bool)
  good_pck = matching.pck_curve(np.asarray(matching.match_errors_px(good, points))[None], valid,
                                np.asarray([1.0]))[0]
  bad_pck = matching.pck_curve(np.asarray(matching.match_errors_px(bad, points))[None], valid,
                               np.asarray([1.0]))[0]
  assert good_pck == 1.0
  assert bad_pck < 0.15


def test_match_descriptors_jit_chunks_and_empty_mask():
  rng = np.random.default_rng(3)
  query = rng.normal(size=(37, 5)).astype(np.float32)
  target = rng.normal(size=(7, 9, 5)).astype(np.float32)
  mask = rng.random((7, 9)) < 0.5
  plain = matching.match_descriptors(query, target, mask)
  jitted = jax.jit(matching.match_descriptors)(query, target, mask)
  chunked = jax.jit(matching.match_descriptors, static_argnames="chunk_size")(
      query, target, mask, chunk_size=8)
  for other in (jitted, chunked):
    np.testing.assert_allclose(np.asarray(other[0]), np.asarray(plain[0]))
    np.testing.assert_allclose(np.asarray(other[1]), np.asarray(plain[1]), atol=1e-6)
  # Brute force in NumPy.
  q = query / np.linalg.norm(query, axis=-1, keepdims=True)
  t = target / np.linalg.norm(target, axis=-1, keepdims=True)
  similarity = np.where(mask.reshape(-1), q @ t.reshape(-1, 5).T, -np.inf)
  best = np.argmax(similarity, axis=-1)
  expected = np.stack([best % 9 + 0.5, best // 9 + 0.5], axis=-1)
  np.testing.assert_allclose(np.asarray(plain[0]), expected)
  # An empty mask means "anywhere" rather than garbage.
  anywhere = matching.match_descriptors(query, target, np.zeros((7, 9), bool))
  assert np.all(np.isfinite(np.asarray(anywhere[1])))


def test_match_descriptors_rejects_bad_shapes():
  with pytest.raises(ValueError, match="same D"):
    matching.match_descriptors(np.zeros((3, 4)), np.zeros((5, 5, 6)), np.ones((5, 5), bool))
  with pytest.raises(ValueError, match="target_mask"):
    matching.match_descriptors(np.zeros((3, 4)), np.zeros((5, 5, 4)), np.ones((5, 4), bool))


def test_patch_descriptors_normalised_and_recover_a_shift():
  rng = np.random.default_rng(4)
  texture = rng.uniform(0, 255, size=(40, 40, 3)).astype(np.float32)
  images = np.stack([texture[5:29, 5:29], texture[8:32, 3:27]])  # B = A moved by (+2, -3)
  patches = np.asarray(matching.patch_descriptors(images, 5))
  assert patches.shape == (2, 24, 24, 25)
  np.testing.assert_allclose(patches.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(patches, axis=-1), 1.0, atol=1e-5)
  flat = np.asarray(matching.patch_descriptors(np.full((1, 6, 6, 1), 7.0), 3))
  np.testing.assert_array_equal(flat, 0.0)
  # Interior points of A (their 5x5 patch fully inside both views) match exactly.
  points = _centres(24, 24).reshape(24, 24, 2)[6:18, 6:18].reshape(-1, 2)
  matched, _, _ = matching.match_points(patches[0], points, patches[1], np.ones((24, 24), bool))
  np.testing.assert_allclose(np.asarray(matched), points + np.asarray([2.0, -3.0]), atol=1e-6)
  with pytest.raises(ValueError, match="odd"):
    matching.patch_descriptors(images, 4)


def test_yaw_difference_bins_and_summary():
  np.testing.assert_array_equal(
      matching.yaw_difference_bin(np.asarray([0.0, 29.9, 30.0, 59.9, 60.0, 90.0, 170.0, np.nan])),
      [0, 0, 1, 1, 2, 3, 3, -1])
  errors = np.asarray([[0.5, 1.5, 3.0, 100.0],
                       [0.2, 9.0, np.nan, 0.1]])
  valid = np.asarray([[True, True, True, True],
                      [True, True, True, False]])
  summary = matching.summarise_matches(errors, valid, np.asarray([10.0, 45.0]))
  assert set(summary) == {"0-30", "30-60", "60-90", ">90", "all", ">=30"}
  first = summary["0-30"]
  assert first["num_points"] == 4 and first["num_pairs"] == 1
  assert first["pck@1px"] == 0.25 and first["pck@2px"] == 0.5 and first["pck@4px"] == 0.75
  assert first["mean_error_px"] == pytest.approx((0.5 + 1.5 + 3 + 100) / 4)
  second = summary["30-60"]  # the NaN counts as a failure, the invalid 0.1 is not counted
  assert second["num_points"] == 3 and second["pck@8px"] == pytest.approx(1 / 3)
  assert second["num_failed"] == 1 and second["mean_error_px"] == pytest.approx(4.6)
  assert second["median_error_px"] == 9.0
  assert summary[">=30"] == second
  assert summary["all"]["num_points"] == 7
  assert np.isnan(summary["60-90"]["pck@4px"]) and summary["60-90"]["num_points"] == 0
  with pytest.raises(ValueError):
    matching.summarise_matches(errors, valid[:, :2], np.asarray([1.0, 2.0]))


def test_fit_pca_recovers_the_main_axis():
  rng = np.random.default_rng(5)
  axis = np.asarray([3.0, -4.0, 0.0]) / 5.0
  x = rng.normal(size=(500, 1)) * 5 * axis + rng.normal(size=(500, 3)) * 0.1 + 2.0
  mean, components = matching.fit_pca(x, 3)
  assert components.shape == (3, 3)
  np.testing.assert_allclose(mean, 2.0, atol=0.6)
  assert abs(abs(components[0] @ axis) - 1.0) < 1e-3
  np.testing.assert_allclose(components @ components.T, np.eye(3), atol=1e-9)
  assert components[0, np.abs(components[0]).argmax()] > 0  # sign convention


def test_pca_rgb_shapes_range_and_shared_basis():
  rng = np.random.default_rng(6)
  height, width, depth = 10, 12, 8
  gradient = np.linspace(-1, 1, width)[None, :, None] * rng.normal(size=depth)
  map_a = gradient + 0.01 * rng.normal(size=(height, width, depth))
  map_b = map_a[:, ::-1].copy()  # the same descriptors, mirrored
  colour_a, colour_b = matching.pca_rgb([map_a, map_b[:7]], masks=[np.ones((10, 12), bool),
                                                                    None])
  assert colour_a.shape == (10, 12, 3) and colour_b.shape == (7, 12, 3)
  for c in (colour_a, colour_b):
    assert c.dtype == np.float32 and c.min() >= 0.0 and c.max() <= 1.0
  # Same basis: equal descriptors get equal colours in both maps.
  np.testing.assert_allclose(colour_a[:7, ::-1], colour_b, atol=1e-6)
  # The first component follows the gradient (monotonic along x, away from the clipped ends).
  red = colour_a[..., 0].mean(axis=0)
  assert abs(np.corrcoef(red, np.arange(width))[0, 1]) > 0.95
  uint8 = matching.to_uint8(colour_a)
  assert uint8.dtype == np.uint8 and uint8.shape == (10, 12, 3)
  with pytest.raises(ValueError):
    matching.pca_rgb([map_a, np.zeros((3, 3, 4))])


def test_sample_descriptors_are_unit_norm_and_flag_outside_points():
  rng = np.random.default_rng(7)
  descriptor_map = rng.normal(size=(5, 6, 4)).astype(np.float32)
  values, inside = matching.sample_descriptors(
      descriptor_map, jnp.asarray([[0.5, 0.5], [3.2, 2.7], [-1.0, 2.0], [6.5, 1.0]]))
  np.testing.assert_array_equal(np.asarray(inside), [True, True, False, False])
  np.testing.assert_allclose(np.linalg.norm(np.asarray(values)[:2], axis=-1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(values)[2:], 0.0)
