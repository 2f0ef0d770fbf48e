"""Tests for dff_jax.metrics with hand-computed values."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dff_jax import metrics


def _face(width=40.0, height=30.0):
  """68 landmarks inside [10, 10 + width] x [20, 20 + height], box corners hit, eyes known."""
  rng = np.random.default_rng(0)
  points = np.stack([rng.uniform(10.0, 10.0 + width, 68), rng.uniform(20.0, 20.0 + height, 68)], -1)
  points[0] = [10.0, 20.0]
  points[1] = [10.0 + width, 20.0 + height]
  points[36] = [15.0, 30.0]
  points[45] = [39.0, 37.0]  # 24, 7 -> inter-ocular distance 25.
  return points


def test_nme_inter_ocular_hand_computed():
  target = _face()
  pred = target.copy()
  pred[:, 0] += 2.5  # every point off by 2.5 px -> NME = 2.5 / 25 = 0.1.
  np.testing.assert_allclose(metrics.nme(pred, target, "inter_ocular"), 0.1)
  pred = target.copy()
  pred[5] += [3.0, 4.0]  # one point off by 5 px -> mean 5/68, / 25.
  np.testing.assert_allclose(metrics.nme(pred, target, "inter_ocular"), 5.0 / 68 / 25)


def test_nme_bbox_from_landmarks_and_from_box():
  target = _face(40.0, 30.0)
  pred = target + np.array([0.0, 3.0])
  np.testing.assert_allclose(metrics.nme(pred, target, "bbox"), 3.0 / math.sqrt(1200.0))
  box = np.array([0.0, 0.0, 100.0, 25.0])  # sqrt(100 * 25) = 50.
  np.testing.assert_allclose(metrics.nme(pred, target, "bbox", box=box), 3.0 / 50.0)


def test_nme_visible_mask_averages_only_visible_points():
  target = _face()
  pred = target.copy()
  pred[:10] += [6.0, 8.0]  # 10 px off, hidden.
  pred[10:20] += [0.0, 5.0]  # 5 px off, visible.
  visible = np.ones(68, bool)
  visible[:10] = False
  want = 10 * 5.0 / 58 / 25.0
  np.testing.assert_allclose(metrics.nme(pred, target, "inter_ocular", visible=visible), want)
  nothing = metrics.nme(pred, target, "inter_ocular", visible=np.zeros(68, bool))
  assert np.isnan(nothing)


def test_bbox_with_visible_uses_visible_points_only():
  target = _face(40.0, 30.0)
  target[2] = [500.0, 500.0]  # a far hidden point must not inflate the box.
  visible = np.ones(68, bool)
  visible[2] = False
  np.testing.assert_allclose(metrics.normaliser_length(target, "bbox", visible=visible),
                             math.sqrt(1200.0))


def test_nme_batched_and_jax_parity_jit():
  rng = np.random.default_rng(1)
  target = np.stack([_face(), _face(20.0, 50.0)]).astype(np.float32)
  pred = (target + rng.normal(0, 1, target.shape)).astype(np.float32)
  want = np.array([metrics.nme(p, t, "bbox") for p, t in zip(pred, target)])
  got = metrics.nme(pred, target, "bbox")
  assert got.shape == (2,)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for name in metrics.NORMALISERS:
    jitted = jax.jit(lambda p, t, name=name: metrics.nme(p, t, name))(pred, target)
    assert isinstance(jitted, jax.Array)
    np.testing.assert_allclose(np.asarray(jitted), metrics.nme(pred, target, name), rtol=1e-5)


def test_nme_errors():
  target = _face()
  with pytest.raises(ValueError, match="unknown NME normaliser"):
    metrics.nme(target, target, "interocular")
  with pytest.raises(ValueError, match="68 iBUG"):
    metrics.nme(target[:21], target[:21], "inter_ocular")
  with pytest.raises(ValueError, match=r"\[\.\.\., N, 2\]"):
    metrics.nme(target[:67], target, "bbox")
  with pytest.raises(ValueError, match="box is only used"):
    metrics.nme(target, target, "inter_ocular", box=np.zeros(4))


def test_ced_curve_and_failure_rate():
  errors = np.array([0.01, 0.02, 0.05, 0.10, np.nan])
  np.testing.assert_allclose(metrics.ced_curve(errors, np.array([0.0, 0.02, 0.05, 0.2])),
                             [0.0, 0.4, 0.6, 0.8])
  np.testing.assert_allclose(metrics.failure_rate(errors, 0.08), 0.4)  # 0.10 and NaN.
  np.testing.assert_allclose(metrics.failure_rate(errors, 0.05), 0.4)  # 0.05 is not > 0.05.
  jax_curve = metrics.ced_curve(jnp.asarray(errors), jnp.array([0.0, 0.02, 0.05, 0.2]))
  np.testing.assert_allclose(np.asarray(jax_curve), [0.0, 0.4, 0.6, 0.8])


def test_auc_hand_computed():
  # Errors 0, 0.04, 0.08, 0.2 with threshold 0.08: contributions 1, 0.5, 0, 0 -> 1.5 / 4.
  errors = np.array([0.0, 0.04, 0.08, 0.2])
  np.testing.assert_allclose(metrics.auc(errors, 0.08), 0.375)
  np.testing.assert_allclose(metrics.auc(np.zeros(3), 0.08), 1.0)
  np.testing.assert_allclose(metrics.auc(np.array([np.nan, 0.0]), 0.08), 0.5)
  with pytest.raises(ValueError, match="positive"):
    metrics.auc(errors, 0.0)


def test_auc_matches_trapezoid_integral_of_ced():
  rng = np.random.default_rng(2)
  errors = rng.uniform(0, 0.12, 200)
  grid = np.linspace(0, 0.08, 8001)
  curve = metrics.ced_curve(errors, grid)
  trapezoid = np.sum((curve[1:] + curve[:-1]) / 2 * np.diff(grid)) / 0.08
  np.testing.assert_allclose(metrics.auc(errors, 0.08), trapezoid, atol=1e-3)
  np.testing.assert_allclose(np.asarray(metrics.auc(jnp.asarray(errors), 0.08)),
                             metrics.auc(errors, 0.08), rtol=1e-5)


def test_pck_with_and_without_valid():
  errors = np.array([[0.5, 1.5, 3.0], [2.0, 10.0, np.nan]])
  np.testing.assert_allclose(metrics.pck(errors, np.array([1.0, 2.0, 5.0])),
                             [1 / 6, 3 / 6, 4 / 6])
  valid = np.array([[True, True, False], [True, False, False]])
  np.testing.assert_allclose(metrics.pck(errors, np.array([1.0, 2.0]), valid), [1 / 3, 1.0])
  jax_pck = jax.jit(metrics.pck)(jnp.asarray(errors), jnp.array([1.0, 2.0]), jnp.asarray(valid))
  np.testing.assert_allclose(np.asarray(jax_pck), [1 / 3, 1.0], rtol=1e-6)
  assert np.all(np.isnan(metrics.pck(errors, np.array([1.0]), np.zeros_like(valid))))


def test_nme_by_yaw_bin():
  errors = np.array([0.01, 0.03, 0.05, 0.07, 0.09, 0.11, 0.5])
  yaw_deg = np.array([0.0, -29.9, 30.0, -59.0, 60.0, 90.0, 95.0])
  result = metrics.nme_by_yaw_bin(errors, yaw_deg)
  assert set(result) == {"0-30", "30-60", "60-90", "mean"}
  np.testing.assert_allclose(result["0-30"], 0.02)
  np.testing.assert_allclose(result["30-60"], 0.06)
  np.testing.assert_allclose(result["60-90"], 0.10)  # 90 included, 95 in no bin.
  np.testing.assert_allclose(result["mean"], 0.06)
  assert all(isinstance(v, float) for v in result.values())
  empty = metrics.nme_by_yaw_bin(np.array([0.1]), np.array([10.0]))
  assert empty["0-30"] == pytest.approx(0.1) and math.isnan(empty["60-90"])
  assert math.isnan(empty["mean"])
  with pytest.raises(ValueError, match="one value per face"):
    metrics.nme_by_yaw_bin(errors, yaw_deg[:3])


# ----------------------------------------------------------------------------------------------
# Gaps found by mutation testing (WORKSPACE.md section 12): namespaces, dtypes, leading batch
# dimensions, defaults, edge counts and the error messages.
# ----------------------------------------------------------------------------------------------


def _nme_case():
  target = _face().astype(np.float32)
  pred = (target + np.random.default_rng(1).normal(0, 1.5, target.shape)).astype(np.float32)
  visible = np.arange(68) % 3 != 0
  box = np.array([8.0, 18.0, 52.0, 51.0], np.float32)
  return pred, target, visible, box


@pytest.mark.parametrize("normaliser", ["inter_ocular", "bbox"])
def test_any_jax_argument_gives_a_jax_nme_equal_to_numpy(normaliser):
  pred, target, visible, box = _nme_case()
  args = [pred, target, visible] + ([box] if normaliser == "bbox" else [])

  def run(*a):
    return metrics.nme(a[0], a[1], normaliser, *a[2:])

  expected = run(*args)
  assert isinstance(expected, (np.ndarray, np.generic)) and expected.dtype == np.float32
  for i in range(len(args)):
    mixed = list(args)
    mixed[i] = jnp.asarray(args[i])
    result = run(*mixed)
    assert isinstance(result, jax.Array), i
    np.testing.assert_allclose(result, expected, rtol=1e-5)
    traced = jax.jit(lambda value, i=i: run(*args[:i], value, *args[i + 1:]))
    np.testing.assert_allclose(traced(jnp.asarray(args[i])), expected, rtol=1e-5)
  for i in range(2):  # point_errors alone
    mixed = [pred, target]
    mixed[i] = jnp.asarray(mixed[i])
    assert isinstance(metrics.point_errors(*mixed), jax.Array)
  # normaliser_length follows its box / visible too.
  if normaliser == "bbox":
    assert isinstance(metrics.normaliser_length(target, "bbox", box=jnp.asarray(box)), jax.Array)
    assert isinstance(metrics.normaliser_length(target, "bbox", visible=jnp.asarray(visible)),
                      jax.Array)
    jax.jit(lambda v: metrics.normaliser_length(target, "bbox", visible=v))(jnp.asarray(visible))
    jax.jit(lambda b: metrics.normaliser_length(target, "bbox", box=b))(jnp.asarray(box))


@pytest.mark.parametrize("normaliser", ["inter_ocular", "bbox"])
def test_nme_of_a_batch_equals_one_face_at_a_time(normaliser):
  rng = np.random.default_rng(2)
  targets = np.stack([_face(40.0, 30.0), _face(20.0, 50.0) + 7.0, _face(60.0, 10.0)])
  preds = targets + rng.normal(0, 2.0, targets.shape)
  visible = rng.uniform(size=(3, 68)) > 0.3
  boxes = np.array([[0.0, 0.0, 40.0, 30.0], [5.0, 6.0, 30.0, 70.0], [1.0, 1.0, 61.0, 21.0]])
  for kwargs in ({}, {"visible": visible}) + (({"box": boxes},) if normaliser == "bbox" else ()):
    batched = metrics.nme(preds, targets, normaliser, **kwargs)
    assert batched.shape == (3,)
    for k in range(3):
      one = {name: value[k] for name, value in kwargs.items()}
      assert batched[k] == pytest.approx(float(metrics.nme(preds[k], targets[k], normaliser, **one)))
    lengths = metrics.normaliser_length(targets, normaliser, **{k: v for k, v in kwargs.items()})
    assert lengths.shape == (3,)


def test_bbox_normaliser_of_an_offset_box_and_of_a_sub_pixel_face():
  target = _face()
  np.testing.assert_allclose(metrics.normaliser_length(target, "bbox",
                                                       box=np.array([100.0, 200.0, 104.0, 209.0])),
                             6.0)
  # Landmarks in normalised units (a box smaller than one pixel): no lower clamp of the area.
  small = _face() / 100.0
  np.testing.assert_allclose(metrics.normaliser_length(small, "bbox"), math.sqrt(0.4 * 0.3))
  np.testing.assert_allclose(metrics.normaliser_length(target, "bbox", box=np.array(
      [0.0, 0.0, 0.5, 0.5])), 0.5)


def test_nme_bbox_with_visible_uses_the_visible_points_box():
  target = _face()
  pred = target + 1.0
  visible = np.zeros(68, bool)
  visible[[2, 3, 36, 45]] = True  # a box spanned by these four points only
  length = metrics.normaliser_length(target, "bbox", visible=visible)
  assert length < metrics.normaliser_length(target, "bbox")
  assert float(metrics.nme(pred, target, "bbox", visible=visible)) == pytest.approx(
      math.sqrt(2.0) / float(length))


def test_nme_with_a_single_visible_point():
  target = _face()
  pred = target.copy()
  pred[36] += [3.0, 4.0]
  visible = np.zeros(68, bool)
  visible[36] = True
  assert float(metrics.nme(pred, target, "inter_ocular", visible=visible)) == pytest.approx(
      5.0 / 25.0)
  assert math.isnan(float(metrics.nme(pred, target, "inter_ocular",
                                      visible=np.zeros(68, bool))))


def test_curve_metrics_keep_float32_batch_rows_and_default_threshold():
  errors = np.array([[0.01, 0.05, 0.09, np.nan], [0.2, 0.0, 0.07, 0.079]], np.float32)
  thresholds = np.array([0.02, 0.08], np.float32)
  for value in (metrics.ced_curve(errors[0], thresholds), metrics.failure_rate(errors[0]),
                metrics.pck(errors, thresholds), metrics.pck(errors, thresholds, errors > 0.03)):
    assert value.dtype == np.float32
  assert metrics.auc(errors[0]) == pytest.approx(float(metrics.auc(errors[0], 0.08)))
  assert metrics.failure_rate(errors[0]) == pytest.approx(0.5)
  assert float(metrics.failure_rate(errors[1])) == pytest.approx(0.25)
  for function in (metrics.auc, metrics.failure_rate):
    rows = function(errors)
    assert rows.shape == (2,)
    for k in range(2):
      assert rows[k] == pytest.approx(float(function(errors[k])))


def test_pck_with_a_single_valid_point_and_with_none():
  errors = np.array([1.0, 3.0, 9.0])
  np.testing.assert_allclose(metrics.pck(errors, [2.0, 4.0], np.array([False, True, False])),
                             [0.0, 1.0])
  assert np.all(np.isnan(metrics.pck(errors, [2.0], np.zeros(3, bool))))


def test_metric_error_messages_name_what_is_wrong():
  target = _face()
  with pytest.raises(ValueError, match=r"^box must have shape \[\.\.\., 4\] \(x0, y0, x1, y1\), "
                                       r"got \(3,\)\.$"):
    metrics.normaliser_length(target, "bbox", box=np.zeros(3))
  with pytest.raises(ValueError, match=r"^visible must have shape \(68,\) \(one flag per point\), "
                                       r"got \(67,\)\.$"):
    metrics.nme(target, target, "inter_ocular", visible=np.ones(67, bool))
  with pytest.raises(ValueError, match=r"^valid must have the shape of errors_px \(2, 3\), got "
                                       r"\(5,\)\.$"):
    metrics.pck(np.zeros((2, 3)), [1.0], np.ones(5, bool))


def test_nme_by_yaw_bin_flattens_means_in_float64_and_warns_for_no_empty_bin():
  rng = np.random.default_rng(4)
  errors = rng.uniform(0.01, 0.2, (40, 1)).astype(np.float32)
  yaw = rng.uniform(-89.0, 89.0, (40, 1)).astype(np.float32)
  yaw[:3] = [[10.0], [45.0], [-70.0]]
  result = metrics.nme_by_yaw_bin(errors, yaw)
  flat_errors, flat_yaw = errors.astype(np.float64).ravel(), np.abs(yaw.astype(np.float64).ravel())
  in_bin = (flat_yaw >= 30.0) & (flat_yaw < 60.0)
  assert result["30-60"] == np.mean(flat_errors[in_bin])  # exactly: float64 mean
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # an empty bin is NaN without numpy's "mean of empty slice"
    empty = metrics.nme_by_yaw_bin([0.1, 0.2], [10.0, 20.0])
  assert math.isnan(empty["60-90"]) and math.isnan(empty["mean"])


def test_region_nme_planted_offsets():
  """Each region moved by its own known offset: its NME is offset / normaliser, and the regions
  weighted by their point counts give the face's NME."""
  target = np.zeros((68, 2))
  target[:, 0] = np.linspace(0, 99, 68)          # box 99 x 49 -> sqrt(99 * 49)
  target[:, 1] = np.linspace(0, 49, 68)[::-1]
  pred = target.copy()
  offsets = dict(jaw=3.0, brows=0.0, nose=1.5, eyes=4.0, mouth=2.0)
  for name, start, stop in metrics.REGIONS:
    pred[start:stop, 1] += offsets[name]
  length = np.sqrt(99.0 * 49.0)
  regions = metrics.region_nme(pred, target, "bbox")
  for name, value in regions.items():
    np.testing.assert_allclose(value, offsets[name] / length, rtol=1e-12)
  counts = {name: stop - start for name, start, stop in metrics.REGIONS}
  weighted = sum(regions[n] * counts[n] for n in regions) / 68
  np.testing.assert_allclose(weighted, metrics.nme(pred, target, "bbox"), rtol=1e-12)
  with pytest.raises(ValueError, match="68 iBUG points"):
    metrics.region_nme(pred[:51], target[:51], "bbox")
