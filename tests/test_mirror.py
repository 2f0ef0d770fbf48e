"""Tests of test-time mirroring (``mirror=True``): the mirror map of an estimate, the planted
cancellations of a stage's antisymmetric steps, the mirrored crop's descriptors, and the option
through the public paths."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dff_jax.alignment import cascade
from dff_jax.face_model import MIRROR_LANDMARKS
from test_align_commands import _run, _stderr_lines, setup  # noqa: F401  (setup: a fixture)
from test_cascade import CROP, centred_pose, small_alignment_model, zero_params

CONFIG = cascade.CascadeConfig(num_stages=2, crop_size=CROP)
BIAS = -1  # The constant-1 feature's row in the regressors.


def test_mirror_landmarks_is_an_involution_that_swaps_sides():
  order = np.asarray(MIRROR_LANDMARKS)
  assert sorted(order) == list(range(68))
  np.testing.assert_array_equal(order[order], np.arange(68))
  assert order[0] == 16 and order[8] == 8 and order[36] == 45 and order[48] == 54
  assert [i for i in range(68) if order[i] == i] == [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]


def test_mirror_estimate_of_a_planted_estimate():
  """Hand-computed: x -> crop - x with landmarks swapped, yaw, roll and tx mirrored."""
  landmarks = np.zeros((68, 2), np.float32)
  landmarks[36] = [10.0, 12.0]   # subject's right eye corner
  landmarks[45] = [25.0, 13.0]
  visibility = np.ones((68,), np.float32)
  visibility[45] = 0.0
  pose = np.array([0.2, 0.1, 0.5, -0.3, 14.0, 17.0], np.float32)
  mirrored, vis, mirrored_pose = cascade.mirror_estimate(
      jnp.asarray(landmarks), jnp.asarray(visibility), jnp.asarray(pose), CROP)
  np.testing.assert_allclose(mirrored[45], [CROP - 10.0, 12.0])
  np.testing.assert_allclose(mirrored[36], [CROP - 25.0, 13.0])
  assert vis[36] == 0.0 and vis[45] == 1.0
  np.testing.assert_allclose(mirrored_pose, [0.2, 0.1, -0.5, 0.3, CROP - 14.0, 17.0])
  twice = cascade.mirror_estimate(mirrored, vis, mirrored_pose, CROP)
  for a, b in zip(twice, (landmarks, visibility, pose)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_mirrored_pose_projects_the_mirror_image_of_a_symmetric_face():
  """The mirror rule for the pose, checked on the model's projection: the face under the
  mirrored pose, read back through ``mirror_estimate``, is the face under the pose (to the
  model's own left-right asymmetry of the fixed 3D landmark vertices, under 0.1 crop px)."""
  am = small_alignment_model()
  model = am.face_model
  zeros_id = jnp.zeros((model.num_identity,), jnp.float32)
  zeros_ex = jnp.zeros((model.num_expression,), jnp.float32)
  pose = jnp.asarray(centred_pose(0.0)).at[1:4].set(jnp.array([0.2, 0.6, -0.25]))
  direct = cascade.fixed_landmarks(am, pose, zeros_id, zeros_ex)
  ones = jnp.ones((68,), jnp.float32)
  _, _, mirrored_pose = cascade.mirror_estimate(direct, ones, pose, CROP)
  seen_mirrored = cascade.fixed_landmarks(am, mirrored_pose, zeros_id, zeros_ex)
  back, _, _ = cascade.mirror_estimate(seen_mirrored, ones, mirrored_pose, CROP)
  assert float(jnp.abs(back - direct).max()) < 0.1


def _planted_params(dx, dy, yaw_step, pitch_step, read_weight=0.0):
  """Two stages whose only non-zero regressors are the constant feature's row (every landmark
  moved by ``(dx, dy)`` crop px, yaw / pitch by the given steps) and, with ``read_weight``,
  landmark i's y moved by ``read_weight`` times its own (1-channel) descriptor."""
  params = zero_params(2, 1)
  weights = np.zeros(params.landmark_weights.shape, np.float32)
  weights[:, BIAS, 0::2] = dx
  weights[:, BIAS, 1::2] = dy
  for i in range(68):
    weights[:, i, 2 * i + 1] = read_weight
  pose_weights = np.zeros(params.pose_weights.shape, np.float32)
  pose_std = np.asarray(params.pose_std)
  pose_weights[:, BIAS, 2] = yaw_step / pose_std[:, 2]
  pose_weights[:, BIAS, 1] = pitch_step / pose_std[:, 1]
  return params.replace(landmark_weights=jnp.asarray(weights),
                        pose_weights=jnp.asarray(pose_weights))


def _ramp_crops():
  """``[1, CROP, CROP, 1]`` a horizontal ramp: brightness = column, so a point's descriptor
  says how far right it is and the mirrored crop's differs."""
  ramp = np.broadcast_to(np.arange(CROP, dtype=np.float32)[None, :, None], (CROP, CROP, 1))
  return jnp.asarray(ramp[None].copy())


def _identity_describe(crops):
  return crops  # the crop itself: a 1-channel dense descriptor map


def test_mirroring_cancels_antisymmetric_steps_and_keeps_symmetric_ones():
  """Planted: a stage that moves every landmark right by dx and turns the yaw by a constant
  step does the opposite on the mirrored crop, so with mirroring those steps cancel, while the
  downward step dy and the pitch step are kept: the mirrored cascade equals the plain cascade
  without the antisymmetric steps."""
  am = small_alignment_model()
  crops = _ramp_crops()
  mirrored = cascade.describe_and_align(_identity_describe, am,
                                        _planted_params(1.5, 0.7, 0.05, 0.03), crops, CONFIG,
                                        mirror=True)
  expected = cascade.describe_and_align(_identity_describe, am,
                                        _planted_params(0.0, 0.7, 0.0, 0.03), crops, CONFIG)
  plain = cascade.describe_and_align(_identity_describe, am,
                                     _planted_params(1.5, 0.7, 0.05, 0.03), crops, CONFIG)
  np.testing.assert_allclose(mirrored.landmarks_px, expected.landmarks_px, atol=2e-3)
  np.testing.assert_allclose(mirrored.pose, expected.pose, atol=1e-5)
  # ... and the planted steps did move the plain cascade.
  assert float(jnp.abs(plain.pose[:, 2] - expected.pose[:, 2]).max()) > 0.05


def test_mirrored_crop_is_read_mirrored():
  """Planted: landmark i moves down by its own descriptor on a ramp (its column). On the
  mirrored crop its mirror landmark stands at crop - x and reads the same value there, so the
  mirrored cascade equals the plain one; had the second crop not been mirrored, it would read
  crop - x and differ."""
  am = small_alignment_model()
  crops = _ramp_crops()
  params = _planted_params(0.0, 0.0, 0.0, 0.0, read_weight=0.05)
  mirrored = cascade.describe_and_align(_identity_describe, am, params, crops, CONFIG,
                                        mirror=True)
  plain = cascade.describe_and_align(_identity_describe, am, params, crops, CONFIG)
  np.testing.assert_allclose(mirrored.landmarks_px, plain.landmarks_px, atol=2e-3)
  unmirrored_read = cascade.describe_and_align(
      lambda c: c[:, :, ::-1] if c.shape[0] == 2 * crops.shape[0] else c, am, params, crops,
      CONFIG, mirror=True)  # describes [crop, mirrored] as [mirrored, crop]: both reads wrong
  assert float(jnp.abs(unmirrored_read.landmarks_px - plain.landmarks_px).max()) > 0.1


def test_mirroring_chunks_jit_and_gradients():
  """Chunks of 2 and the whole batch give the same answer; jit equals eager; gradients with
  respect to the crops are finite and non-zero."""
  am = small_alignment_model()
  crops = jnp.concatenate([_ramp_crops(), _ramp_crops()[:, ::-1], _ramp_crops()[:, :, ::-1],
                           _ramp_crops() * 0.5], axis=0)
  params = _planted_params(0.4, 0.2, 0.02, 0.01, read_weight=0.05)

  def run(crops, chunk):
    return cascade.describe_and_align(_identity_describe, am, params, crops, CONFIG,
                                      chunk=chunk, mirror=True).landmarks_px

  whole = run(crops, 0)
  np.testing.assert_allclose(run(crops, 2), whole, atol=1e-4)
  np.testing.assert_allclose(jax.jit(run, static_argnums=1)(crops, 2), whole, atol=1e-3)
  grads = jax.grad(lambda c: jnp.sum(run(c, 2)[:, :, 1]))(crops)
  assert bool(jnp.all(jnp.isfinite(grads))) and float(jnp.abs(grads).max()) > 1e-3


@pytest.mark.parametrize("mirror", [False, True])
def test_aligner_spec_carries_the_mirror_option(mirror):
  from dff_jax.alignment import runner  # pylint: disable=g-import-not-at-top
  from dff_jax import Aligner  # pylint: disable=g-import-not-at-top
  spec = runner.resolve_aligner("default", mirror=mirror)
  assert spec.mirror is mirror
  aligner = Aligner.load("default", mirror=mirror)
  assert aligner.cascade.spec.mirror is mirror
  assert aligner.cascade is not Aligner.load("default", mirror=not mirror).cascade


def test_align_files_and_eval_with_mirror_on_a_zero_regressor_cascade(setup, tmp_path):
  """The commands' mirror option, through a zero-regressor cascade: every stage's two steps are
  nothing, so the mirrored run must return the plain run's landmarks (what a wrong flip of the
  crop, the pose or the landmark order would break is pinned by the planted tests above)."""
  from dff_jax.alignment import files
  from experiments import eval_alignment
  image_path = setup["images"] / "face0.png"
  bbox = ",".join(f"{v:.4f}" for v in setup["faces"]["box"][0])
  documents = {}
  for mirror in (False, True):
    out = tmp_path / f"mirror_{mirror}"
    files.align_files(str(image_path), out, bbox=bbox, cascade=str(setup["cascade"]),
                      batch_size=2, progress=False, overlay=False, mirror=mirror)
    documents[mirror] = json.loads((out / "face0.json").read_text())["faces"][0]
  for key in ("landmarks_px", "landmarks_3d_px"):
    np.testing.assert_allclose(documents[True][key], documents[False][key], atol=1e-3)
  summary = eval_alignment.evaluate("synthetic", tmp_path / "eval", cascade=str(setup["cascade"]),
                                    num_faces=2, batch_size=2, progress=False, mirror=True)
  assert summary["test_time_mirror"] is True and np.isfinite(summary["nme_mean"])


def test_align_multiview_with_mirror_or_processes_is_a_one_line_error(setup, tmp_path):
  for flag, message in (("--mirror", "--mirror is not available for multi-view"),
                        ("--processes=2", "--processes is not available for multi-view")):
    proc = _run("experiments.align", f"--images={setup['images']}", f"--out_dir={tmp_path}",
                f"--cascade={setup['cascade']}", "--multiview", flag)
    lines = _stderr_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"align: error: {message}")
