"""Tests of the descriptor agreement: does a box hold a face (``CascadeParams.descriptor_template``,
:func:`dff_jax.alignment.cascade.landmark_agreement`, :mod:`dff_jax.alignment.agreement`)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dff_jax.alignment import agreement
from dff_jax.alignment import cascade
from dff_jax.alignment import io as cascade_io
from dff_jax.alignment import results
from test_align_commands import setup  # noqa: F401
from test_cascade import CROP, small_alignment_model, zero_params

CONFIG = cascade.CascadeConfig(num_stages=2, crop_size=CROP)


def _planted_features():
  """``[68 * 2 + 1]``: landmarks 0-9 read (1, 0), 10-19 read (0, 1), the rest not read."""
  rows = np.zeros((68, 2), np.float32)
  rows[:10, 0] = 1.0
  rows[10:20, 1] = 1.0
  return np.concatenate([rows.ravel(), [1.0]]).astype(np.float32)


def test_landmark_agreement_is_the_cosine_of_each_read_row_and_their_mean():
  """Planted: a template of (1, 0) rows but (-1, 0) at landmark 5: landmarks 0-9 agree at 1
  (5 at -1), 10-19 at 0, the 48 unread ones give 0 and do not count: mean (9 - 1) / 20."""
  template = np.tile([1.0, 0.0], (68, 1)).astype(np.float32)
  template[5] = [-1.0, 0.0]
  per_landmark, mean = jax.jit(cascade.landmark_agreement)(_planted_features(), template)
  expected = np.zeros(68)
  expected[:10], expected[5] = 1.0, -1.0
  np.testing.assert_allclose(per_landmark, expected, atol=1e-6)
  np.testing.assert_allclose(mean, 0.4, atol=1e-6)
  np.testing.assert_allclose(agreement.agreements(_planted_features()[None], template), [0.4],
                             atol=1e-6)
  # Nothing read: 0, not a division by zero.
  nothing = np.zeros(68 * 2 + 1, np.float32)
  nothing[-1] = 1.0
  assert float(cascade.landmark_agreement(nothing, template)[1]) == 0.0


def _align(params, mirror=False):
  """The zero-regressor cascade on a constant 1-channel crop: every read descriptor is 1."""
  am = small_alignment_model()
  crops = jnp.ones((1, CROP, CROP, 1), jnp.float32)
  return jax.jit(lambda p: cascade.describe_and_align(lambda x: x, am, p, crops, CONFIG,
                                                      mirror=mirror))(params)


def test_the_cascade_reports_the_agreement_of_what_its_last_stage_read():
  """Planted: every descriptor is 1 and the template is +1 at even landmarks, -1 at odd ones,
  so each read landmark agrees at its template's sign and the face at their mean over the
  landmarks the (unmoving) state shows; without a template both fields are None; the per-stage
  states never carry one; mirroring gives the same values (a constant crop mirrors onto
  itself)."""
  signs = np.where(np.arange(68) % 2 == 0, 1.0, -1.0).astype(np.float32)
  params = zero_params(2, 1).replace(descriptor_template=jnp.asarray(signs[:, None]))
  state = _align(params)
  visible = np.asarray(state.visibility[0])
  assert visible.sum() > 0
  np.testing.assert_allclose(state.landmark_agreement[0], signs * visible, atol=1e-6)
  np.testing.assert_allclose(state.agreement[0], (signs * visible).sum() / visible.sum(),
                             atol=1e-6)
  mirrored = _align(params, mirror=True)
  np.testing.assert_allclose(mirrored.agreement, state.agreement, atol=1e-6)
  plain = _align(zero_params(2, 1))
  assert plain.agreement is None and plain.landmark_agreement is None
  _, stages = cascade.run_cascade(small_alignment_model(), params,
                                  jnp.ones((CROP, CROP, 1), jnp.float32), CONFIG)
  assert stages.agreement is None
  result = cascade.state_to_image(state, jnp.asarray([[0.0, 0.0, CROP, CROP]]), CROP)
  np.testing.assert_array_equal(result.agreement, state.agreement)


def test_fit_template_recovers_a_planted_template_and_ignores_unread_rows():
  """Planted: 400 faces whose read descriptors are a known template's rows plus noise, each
  row unread (zero) in a fifth of them; landmark 7 is never read: a zero row."""
  rng = np.random.default_rng(0)
  truth = rng.normal(size=(68, 3))
  truth /= np.linalg.norm(truth, axis=1, keepdims=True)
  rows = truth[None] + 0.3 * rng.normal(size=(400, 68, 3))
  rows /= np.linalg.norm(rows, axis=-1, keepdims=True)
  rows *= (rng.random((400, 68, 1)) > 0.2)
  rows[:, 7] = 0.0
  features = np.concatenate([rows.reshape(400, -1), np.ones((400, 1))], axis=1)
  template = agreement.fit_template(features)
  assert template.shape == (68, 3) and template.dtype == np.float32
  cosines = np.sum(template * truth, axis=1)
  assert np.all(np.delete(cosines, 7) > 0.995), cosines.min()
  np.testing.assert_array_equal(template[7], 0.0)
  with pytest.raises(ValueError, match="68 \\* D \\+ 1"):
    agreement.fit_template(np.zeros((0, 69)))


def test_the_template_is_saved_loaded_and_checked(tmp_path):
  template = np.eye(68, 2, dtype=np.float32)
  params = zero_params(2, 2).replace(descriptor_template=jnp.asarray(template))
  meta = dict(features="sift", descriptor_dim=2, face_model="default")
  path = cascade_io.save_cascade(tmp_path / "c.npz", params, CONFIG, meta)
  loaded, _, _ = cascade_io.load_cascade(path)
  np.testing.assert_array_equal(loaded.descriptor_template, template)  # float32 kept
  bad = cascade_io.save_cascade(tmp_path / "bad.npz", params.replace(
      descriptor_template=jnp.zeros((68, 3))), CONFIG, meta)
  with pytest.raises(ValueError, match="inconsistent cascade arrays"):
    cascade_io.load_cascade(bad)


def test_a_face_document_carries_its_agreement():
  pose = results.Pose(yaw_rad=0.0, pitch_rad=0.0, roll_rad=0.0, scale=1.0,
                      translation_px=np.zeros(2, np.float32))
  face = results.Face(landmarks_px=np.zeros((68, 2)), landmarks_3d_px=np.zeros((68, 2)),
                      visibility=np.ones(68, bool), pose=pose, shape_coefficients=np.zeros(3),
                      expression_coefficients=np.zeros(2), box=np.zeros(4),
                      agreement=0.123456, landmark_agreement=np.full(68, 0.98765))
  document = json.loads(json.dumps(face.to_json()))
  assert document["agreement"] == 0.1235
  assert document["landmark_agreement"] == [0.988] * 68
  plain = dataclasses.replace(face, agreement=None, landmark_agreement=None).to_json()
  assert plain["agreement"] is None and plain["landmark_agreement"] is None


@pytest.mark.parametrize("sign, warned", [(-1.0, True), (1.0, False)])
def test_align_warns_about_a_face_below_the_threshold(setup, tmp_path, sign, warned):
  """SIFT descriptors have no negative entries, so a template of all-negative rows disagrees
  with every read descriptor (agreement <= 0, below a threshold of 0.5: a warning naming the
  image) and an all-positive one agrees (>= 0, above -0.5: none); the JSON carries the value."""
  from dff_jax.alignment import files  # pylint: disable=g-import-not-at-top
  params, config, meta = cascade_io.load_cascade(setup["cascade"])
  template = np.full((68, 128), sign / np.sqrt(128.0), np.float32)
  path = cascade_io.save_cascade(
      tmp_path / "cascade_sift.npz", params.replace(descriptor_template=jnp.asarray(template)),
      config, dict(meta, agreement=dict(min_agreement=-sign * 0.5)))
  box = setup["faces"]["box"][0]
  messages = []
  files.align_files(str(setup["images"] / "face0.png"), tmp_path / "out",
                    bbox=",".join(f"{v:.4f}" for v in box), cascade=str(path), batch_size=2,
                    progress=False, overlay=False, report=messages.append)
  face = json.loads((tmp_path / "out" / "face0.json").read_text())["faces"][0]
  assert (face["agreement"] <= 0.0) if warned else (face["agreement"] >= 0.0)
  assert len(face["landmark_agreement"]) == 68
  low = [m for m in messages if "agreement" in m]
  if warned:
    assert len(low) == 1 and "face0.png: face 0: agreement" in low[0]
    assert "below the cascade's 0.500: its box may hold no face" in low[0]
  else:
    assert not low


def test_fit_agreement_command_fits_on_training_faces_and_evaluates_held_out_ones(setup,
                                                                                  tmp_path):
  """The command fits on the chosen sources only (each face also mirrored: 3 faces, 6 rows),
  writes unit (or zero) template rows and a threshold that about 1 % of those rows fall below;
  --evaluate scores a val split and face-free images against that threshold; fitting on the
  val split and mixing the modes are refused in one line."""
  from conftest import run_module, stderr_lines  # pylint: disable=g-import-not-at-top
  from test_align_commands import _write_faces68  # pylint: disable=g-import-not-at-top
  data = tmp_path / "faces68"
  _write_faces68(setup, data, ["afw", "afw", "helen-train", "ytf-train"])
  (data / "val.json").write_text((data / "train.json").read_text())
  out = tmp_path / "fitted" / "cascade_sift.npz"
  proc = run_module("experiments.fit_agreement", f"--cascade={setup['cascade']}",
                    f"--data_dir={data}", "--num_synthetic=0", "--num_face_free=4", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout)
  assert report["training_faces"]["count"] == 6 and report["training_renders"]["count"] == 0
  assert report["training_face_free_images"]["count"] == 4
  params, _, meta = cascade_io.load_cascade(out)
  norms = np.linalg.norm(np.asarray(params.descriptor_template), axis=1)
  assert np.all((np.abs(norms - 1) < 1e-5) | (norms == 0)) and norms.max() > 0.99
  assert meta["agreement"]["min_agreement"] == report["min_agreement"]
  assert report["training_faces"]["below_threshold"] <= 1 / 6
  results_path = tmp_path / "eval.json"
  proc = run_module("experiments.fit_agreement", "--evaluate", f"--cascade={out}",
                    f"--data_dir={data}", "--aflw_dir=", "--num_face_free=3",
                    f"--results={results_path}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  evaluation = json.loads(results_path.read_text())
  assert evaluation["min_agreement"] == report["min_agreement"]
  assert evaluation["faces68_val_faces"]["count"] == 4
  assert evaluation["face_free_images"]["count"] == 3
  assert "aflw2000_3d_dev_faces" not in evaluation
  for flags_given, message in ((("--split=val", f"--out={out}"), "validation only"),
                               (("--evaluate", f"--out={out}"), "give --out=FILE")):
    proc = run_module("experiments.fit_agreement", f"--cascade={setup['cascade']}", *flags_given)
    lines = stderr_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
