"""Tests of the output refinement: one linear step after the cascade that moves ``landmarks_px``
freely (``CascadeParams.refine_weights``, :mod:`dff_jax.alignment.refinement`)."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dff_jax.alignment import cascade
from dff_jax.alignment import io as cascade_io
from dff_jax.alignment import refinement
from dff_jax.face_model import MIRROR_LANDMARKS
from dff_jax.training import finetune
from conftest import write_random_bundle
from test_align_commands import CROP as COMMAND_CROP
from test_align_commands import _run, _stderr_lines, _write_faces68, setup  # noqa: F401
from test_cascade import CROP, small_alignment_model, zero_params

CONFIG = cascade.CascadeConfig(num_stages=2, crop_size=CROP)
FEATURES = 68 * 1 + 1  # a 1-channel descriptor map: 68 values and the constant 1
NOSE = 30


def _refine_weights(dx=0.0, dy=0.0, read=None):
  """``[F, 136]``: every landmark moved by ``(dx, dy)`` crop px (the constant feature's row)
  and, with ``read = (i, c)``, landmark i's x moved by ``c`` times its own descriptor."""
  weights = np.zeros((FEATURES, 136), np.float32)
  weights[-1, 0::2], weights[-1, 1::2] = dx, dy
  if read is not None:
    landmark, coefficient = read
    weights[landmark, 2 * landmark] = coefficient
  return jnp.asarray(weights)


def _ramp_crops():
  """``[1, CROP, CROP, 1]`` brightness = column index: at a point ``x`` (pixel centres at
  ``j + 0.5``) the bilinear descriptor is ``x - 0.5``."""
  ramp = np.broadcast_to(np.arange(CROP, dtype=np.float32)[None, :, None], (CROP, CROP, 1))
  return jnp.asarray(ramp[None].copy())


def _align(params, alignment_model=None, mirror=False):
  am = small_alignment_model() if alignment_model is None else alignment_model
  return jax.jit(lambda p, c: cascade.describe_and_align(lambda x: x, am, p, c, CONFIG,
                                                         mirror=mirror))(params, _ramp_crops())


def test_a_constant_step_moves_landmarks_px_only():
  """Planted: a refinement whose only weights are the constant feature's moves every output
  point by exactly that step; pose, shape, visibility and so ``landmarks_3d_px`` are the
  unrefined cascade's, and so are its per-stage states."""
  params = zero_params(2, 1)
  plain = _align(params)
  refined = _align(params.replace(refine_weights=_refine_weights(1.5, -2.0)))
  np.testing.assert_allclose(refined.landmarks_px - plain.landmarks_px,
                             np.broadcast_to([1.5, -2.0], plain.landmarks_px.shape), atol=1e-5)
  for name in ("pose", "shape_coefficients", "expression_coefficients", "visibility"):
    np.testing.assert_array_equal(getattr(refined, name), getattr(plain, name))
  am = small_alignment_model()
  box = jnp.asarray([[10.0, 20.0, 10.0 + 2 * CROP, 20.0 + 2 * CROP]])  # 2 image px per crop px
  image_plain = cascade.state_to_image(plain, box, CROP, am)
  image_refined = cascade.state_to_image(refined, box, CROP, am)
  np.testing.assert_allclose(image_refined.landmarks_px - image_plain.landmarks_px,
                             np.broadcast_to([3.0, -4.0], image_plain.landmarks_px.shape),
                             atol=1e-4)
  np.testing.assert_array_equal(image_refined.landmarks_3d_px, image_plain.landmarks_3d_px)
  _, stages = cascade.run_cascade(am, params.replace(refine_weights=_refine_weights(1.5, -2.0)),
                                  _ramp_crops()[0], CONFIG)
  _, plain_stages = cascade.run_cascade(am, params, _ramp_crops()[0], CONFIG)
  np.testing.assert_array_equal(stages.landmarks_px, plain_stages.landmarks_px)


def test_the_step_reads_the_features_of_the_last_stage():
  """Planted: on a ramp (descriptor = x - 0.5) the nose tip moves right by 0.1 times its
  descriptor as the last stage read it, at the landmark that stage started from (the state after
  the first of two stages), not where the output ends; the output calibration, which moves only
  the outputs, does not change the step."""
  params = zero_params(2, 1).replace(refine_weights=_refine_weights(read=(NOSE, 0.1)))
  am = small_alignment_model()
  # Each stage moves the face right by 1.5 px (a constant step of the pose's x translation), so
  # the last stage starts 1.5 px left of the outputs.
  moving = np.zeros(params.pose_weights.shape, np.float32)
  moving[:, -1, 4] = 1.5 / np.asarray(params.pose_std)[:, 4]
  params = params.replace(pose_weights=jnp.asarray(moving))
  offsets = np.zeros((68, 3), np.float32)
  offsets[NOSE, 0] = 10.0
  calibrated = am.replace(output_offsets=jnp.asarray(offsets))
  crop = _ramp_crops()[0]
  for model in (am, calibrated):
    final, stages = jax.jit(lambda p, m: cascade.run_cascade(m, p, crop, CONFIG))(params, model)
    plain, _ = jax.jit(lambda p, m: cascade.run_cascade(m, p, crop, CONFIG))(
        params.replace(refine_weights=None), model)
    start_x = float(stages.landmarks_px[0, NOSE, 0])  # where the last stage read the nose
    np.testing.assert_allclose(float(plain.landmarks_px[NOSE, 0]) - start_x, 1.5, atol=1e-3)
    moved = np.asarray(final.landmarks_px - plain.landmarks_px)
    np.testing.assert_allclose(moved[NOSE], [0.1 * (start_x - 0.5), 0.0], atol=1e-4)
    np.testing.assert_array_equal(np.delete(moved, NOSE, axis=0), 0.0)


def test_mirroring_cancels_the_antisymmetric_part_of_the_step():
  """Planted: a constant step (dx, dy) is (-dx, dy) on the mirrored crop, read back in the crop:
  with test-time mirroring the x steps cancel and the y step is kept."""
  params = zero_params(2, 1)
  plain = _align(params, mirror=True)
  refined = _align(params.replace(refine_weights=_refine_weights(1.5, -2.0)), mirror=True)
  np.testing.assert_allclose(refined.landmarks_px - plain.landmarks_px,
                             np.broadcast_to([0.0, -2.0], plain.landmarks_px.shape), atol=1e-5)


def test_gradients_reach_the_refinement_weights_and_the_descriptors():
  """The refined outputs are differentiable in the weights and in the descriptor map: a
  directional derivative matches central differences."""
  am = small_alignment_model()
  params = zero_params(2, 1)

  def loss(weights, crops):
    states = cascade.describe_and_align(lambda x: x, am, params.replace(refine_weights=weights),
                                        crops, CONFIG)
    return jnp.sum(states.landmarks_px[0, NOSE] ** 2)

  weights = _refine_weights(0.2, 0.1, read=(NOSE, 0.05))
  grad_w, grad_c = jax.jit(jax.grad(loss, argnums=(0, 1)))(weights, _ramp_crops())
  assert float(jnp.abs(grad_w[-1]).max()) > 0 and float(jnp.abs(grad_c).max()) > 0
  direction = np.random.default_rng(0).normal(size=weights.shape).astype(np.float32) * 0.01
  value = jax.jit(loss)
  numeric = (value(weights + direction, _ramp_crops())
             - value(weights - direction, _ramp_crops())) / 2
  assert float(jnp.sum(grad_w * direction)) == pytest.approx(float(numeric), rel=1e-2)


def test_fit_weights_recovers_a_planted_map_and_prefers_ridge_for_noise():
  """Noise-free targets of a planted linear map: the weights are recovered and the smallest
  lambda wins; targets of pure noise: the largest lambda wins (it predicts least)."""
  rng = np.random.default_rng(0)
  features = np.concatenate([rng.normal(size=(400, 12)), np.ones((400, 1))], axis=1)
  planted = rng.normal(size=(13, 4))
  held_out = np.arange(400) % 5 == 0
  weights, best, errors = refinement.fit_weights(features, features @ planted, held_out,
                                                 (1e-6, 1.0, 100.0))
  assert best == 1e-6 and np.all(np.diff(errors) > 0)
  np.testing.assert_allclose(weights, planted, atol=1e-4)
  noise = rng.normal(size=(400, 4))
  weights, best, _ = refinement.fit_weights(features, noise, held_out, (1e-6, 1.0, 1e4))
  assert best == 1e4
  # The final solve uses every row, lambda scaled by rows / fitting rows (400 / 320).
  expected = np.linalg.solve(features.T @ features + 1e4 * 400 / 320 * np.eye(13),
                             features.T @ noise)
  np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="need both fitting and held-out rows, got 0 held out"):
    refinement.fit_weights(features, features @ planted, np.zeros(400, bool))


def test_mirror_face_planted():
  """x -> W - x and iBUG-68's left-right order; twice is the identity."""
  image = np.arange(2 * 3, dtype=np.uint8).reshape(2, 3, 1)
  points = np.zeros((68, 2))
  points[36] = [0.5, 0.5]  # the subject's right eye's outer corner, image left
  points[45] = [2.0, 1.5]  # the subject's left eye's outer corner
  mirrored, moved = refinement.mirror_face(image, points)
  np.testing.assert_array_equal(mirrored[:, :, 0], [[2, 1, 0], [5, 4, 3]])
  np.testing.assert_allclose(moved[36], [1.0, 1.5])  # was 45, at 3 - 2.0
  np.testing.assert_allclose(moved[45], [2.5, 0.5])
  assert MIRROR_LANDMARKS[36] == 45
  again_image, again = refinement.mirror_face(mirrored, moved)
  np.testing.assert_array_equal(again_image, image)
  np.testing.assert_allclose(again, points)


def test_synthetic_faces_carry_their_labels_in_the_cascades_convention(setup, tmp_path):
  """The renders' labels are the model's landmark vertices moved by the cascade's landmark and
  output offsets projected under the rendering pose (planted: an output offset of 10 mm along
  the model's x moves a frontal face's label by about 10 mm times the scale to the right)."""
  from dff_jax import geometry
  from dff_jax.alignment import runner
  from dff_jax.evaluation import alignment as evaluation
  bundle = write_random_bundle(tmp_path / "bundle", COMMAND_CROP)
  sift_params, config, _ = cascade_io.load_cascade(setup["cascade"])
  meta = dict(features="dff", descriptor_dim=4, face_model="default",
              descriptor_source=str(bundle), data=dict(image_size=COMMAND_CROP))
  params = cascade.zero_params(2, 4, sift_params.initial_pose)
  plain = cascade_io.save_cascade(tmp_path / "plain.npz", params, config, meta)
  offsets = np.zeros((68, 3))
  offsets[NOSE, 0] = 10.0
  moved = cascade_io.save_cascade(tmp_path / "moved.npz", params, config,
                                  dict(meta, output_offsets_mm=offsets.tolist()))
  faces = [refinement.synthetic_faces(runner.load_aligner(runner.resolve_aligner(str(p)),
                                                          cache=False), 2, 7)
           for p in (plain, moved)]
  renders = evaluation.synthetic_set(2, 7, image_size=None, data=meta["data"])
  for job, (image, labels, box), (image2, labels2, box2) in zip(renders.jobs, *faces):
    truth = job.load().truth
    np.testing.assert_allclose(labels, truth["landmarks_px"], atol=1e-4)  # no offsets: as drawn
    assert image.shape == (COMMAND_CROP, COMMAND_CROP, 3) and box.shape == (4,)
    np.testing.assert_array_equal(image, image2)
    np.testing.assert_array_equal(box, box2)
    shift = labels2 - labels
    np.testing.assert_allclose(np.delete(shift, NOSE, axis=0), 0.0, atol=1e-4)
    # 10 mm along the model's x axis: the first column of R, scaled, y flipped for the image.
    scale, pitch, yaw, roll = truth["model_pose"][:4]
    rotation = np.asarray(geometry.euler_to_matrix(pitch, yaw, roll))
    np.testing.assert_allclose(shift[NOSE], 10.0 * scale * rotation[:2, 0] * [1, -1], atol=1e-3)
  # The boxes follow the cascade's training box jitter: none gives the labels' own box.
  still = cascade_io.save_cascade(tmp_path / "still.npz", params, config,
                                  dict(meta, box_jitter=dict(scale=0.0, shift=0.0, aspect=0.0)))
  still_faces = refinement.synthetic_faces(
      runner.load_aligner(runner.resolve_aligner(str(still)), cache=False), 2, 7)
  for (_, labels, box), (_, _, jittered) in zip(still_faces, faces[0]):
    np.testing.assert_allclose(box, geometry.landmark_box(labels), atol=1e-3)
    assert np.abs(jittered - box).max() > 0.1


def test_cascade_files_and_finetuning_keep_the_refinement(tmp_path):
  """Saved and loaded (float32 exactly, float16 within its precision); a wrong shape is refused
  in one line; fine-tuning keeps it fixed (split / join)."""
  weights = np.random.default_rng(1).normal(0, 0.1, (FEATURES, 136)).astype(np.float32)
  params = zero_params(2, 1).replace(refine_weights=jnp.asarray(weights))
  meta = dict(features="sift", descriptor_dim=1, face_model="default")
  path = cascade_io.save_cascade(tmp_path / "r.npz", params, CONFIG, meta, compact=False)
  np.testing.assert_array_equal(cascade_io.load_cascade(path)[0].refine_weights, weights)
  compact = cascade_io.save_cascade(tmp_path / "c.npz", params, CONFIG, meta)
  np.testing.assert_allclose(cascade_io.load_cascade(compact)[0].refine_weights, weights,
                             rtol=1e-3, atol=1e-4)
  assert cascade_io.load_cascade(cascade_io.save_cascade(
      tmp_path / "none.npz", zero_params(2, 1), CONFIG, meta))[0].refine_weights is None
  bad = params.replace(refine_weights=jnp.zeros((FEATURES, 135)))
  cascade_io.save_cascade(tmp_path / "bad.npz", bad, CONFIG, meta)
  with pytest.raises(ValueError, match=r"bad.npz: inconsistent cascade arrays .*refine_weights"):
    cascade_io.load_cascade(tmp_path / "bad.npz")
  trained, fixed = finetune.split_cascade(params)
  assert "refine_weights" not in trained
  np.testing.assert_array_equal(finetune.join_cascade(trained, fixed).refine_weights, weights)
  assert finetune.join_cascade(*finetune.split_cascade(zero_params(2, 1))).refine_weights is None


def test_refine_outputs_command_fits_on_the_chosen_sources_and_replaces_a_refinement(
    setup, tmp_path, monkeypatch):
  """The command fits on the chosen sources' faces (and their mirror images) and writes a cascade
  whose outputs on those faces are closer to the annotation; refining that file again fits the
  same weights (a refinement is fitted to the unrefined outputs); the val split and an unknown
  source are refused in one line."""
  from experiments import eval_alignment
  data = tmp_path / "faces68"
  _write_faces68(setup, data, ["afw", "afw", "helen-train", "ytf-train"])
  # A tiny random DFF encoder (D = 4) and a zero cascade for it: 273 features per face.
  bundle = write_random_bundle(tmp_path / "bundle", COMMAND_CROP)
  sift_params, config, _ = cascade_io.load_cascade(setup["cascade"])
  start = cascade_io.save_cascade(
      tmp_path / "start" / "cascade_dff.npz", cascade.zero_params(2, 4, sift_params.initial_pose),
      config, dict(features="dff", descriptor_dim=4, face_model="default",
                   descriptor_source=str(bundle)), compact=False)
  first_path = tmp_path / "first" / "cascade_dff.npz"
  proc = _run("experiments.refine_outputs", f"--cascade={start}",
              f"--data_dir={data}", "--sources=afw,helen-train", f"--out={first_path}",
              "--batch_size=4", "--held_out_every=2", "--num_synthetic=3")
  assert proc.returncode == 0, proc.stderr
  first = json.loads(proc.stdout)
  assert first["faces"] == 3 and first["mirrored"] and first["sources"] == ["afw", "helen-train"]
  assert first["synthetic_faces"] == 3 and first["synthetic_seed"] == refinement.SYNTHETIC_SEED
  # Rows by hand: the 3 faces and their mirror images (groups 0 0 1 1 2 2), the 3 renders
  # (groups 3 4 5); every second group is held out: faces 0 and 2 with mirrors, render 4.
  assert first["rows"] == dict(photos=6, renders=3, held_out=5)
  assert first["split"] == "train" and first["data_dir"] == str(data)
  assert first["held_out_every"] == 2
  assert Path(first["refined_from"]).resolve() == Path(start).resolve()
  assert set(first["candidates"]) == {f"{c:g}" for c in refinement.REGULARISATION_CANDIDATES}
  assert first["regularisation"] in refinement.REGULARISATION_CANDIDATES
  assert first["photos_nme_after"] < 0.5 * first["photos_nme_before"]
  assert first["renders_nme_after"] < 0.5 * first["renders_nme_before"]
  params, _, meta = cascade_io.load_cascade(first_path)
  assert params.refine_weights.shape == (68 * 4 + 1, 136)
  assert meta["output_refinement"] == first
  second = refinement.refine_cascade(str(first_path), tmp_path / "second.npz", str(data),
                                     sources=["afw", "helen-train"], batch_size=4,
                                     held_out_every=2, num_synthetic=3)
  assert second["photos_nme_before"] == pytest.approx(first["photos_nme_before"], rel=1e-5)
  np.testing.assert_allclose(cascade_io.load_cascade(tmp_path / "second.npz")[0].refine_weights,
                             params.refine_weights, rtol=1e-4, atol=1e-6)
  # Another encoder (a point-head bundle, same D) replaces the cascade's: the file names it and
  # the weights are fitted to its descriptors.
  other = write_random_bundle(tmp_path / "other_bundle", COMMAND_CROP, head="point")
  refinement.refine_cascade(str(start), tmp_path / "third.npz", str(data),
                            sources=["afw", "helen-train"], checkpoint=str(other), batch_size=4,
                            held_out_every=2, num_synthetic=3)
  third_params, _, third_meta = cascade_io.load_cascade(tmp_path / "third.npz")
  assert third_meta["descriptor_source"] == str(other.resolve())
  assert meta["descriptor_source"] == str(bundle.resolve())
  assert not np.allclose(third_params.refine_weights, params.refine_weights, atol=1e-3)
  scores = {}
  for name, path in (("start", start), ("refined", first_path)):
    scores[name] = eval_alignment.evaluate(
        "faces68", tmp_path / name, data_dir=str(data), split="train",
        sources=["afw", "helen-train"], cascade=str(path), batch_size=4,
        progress=False)["nme_mean"]
  assert scores["refined"] < 0.5 * scores["start"]
  # Unmirrored, other lambdas, every fifth group held out: photos in groups 0 1 2 (0 held out),
  # renders in 3 4 5 (5 held out). The report's errors before the fit are the evaluations' on
  # the same faces and renders from the same boxes (another path: eval_alignment).
  plain = refinement.refine_cascade(str(start), tmp_path / "plain.npz", str(data),
                                    sources=["afw", "helen-train"], batch_size=4, mirror=False,
                                    held_out_every=5, num_synthetic=3, candidates=(0.5, 7.0))
  assert plain["rows"] == dict(photos=3, renders=3, held_out=2) and not plain["mirrored"]
  assert set(plain["candidates"]) == {"0.5", "7"} and plain["regularisation"] in (0.5, 7.0)
  assert plain["photos_nme_before"] == pytest.approx(scores["start"], rel=1e-4)
  renders = eval_alignment.evaluate("synthetic", tmp_path / "renders", cascade=str(start),
                                    num_faces=3, seed=refinement.SYNTHETIC_SEED, batch_size=4,
                                    progress=False)
  assert plain["renders_nme_before"] == pytest.approx(renders["nme_mean"], rel=1e-4)
  # Photos only (renders are off by default): no renders' figures. The photos are decoded as
  # `align` decodes them for this grey encoder: their luma plane.
  from dff_jax import image_io
  decoded = []
  read_image = image_io.read_image
  monkeypatch.setattr(image_io, "read_image",
                      lambda path, **kw: decoded.append(kw.get("grey")) or read_image(path, **kw))
  photos = refinement.refine_cascade(str(start), tmp_path / "photos.npz", str(data),
                                     sources=["afw", "helen-train"], batch_size=4,
                                     held_out_every=2)
  assert photos["rows"] == dict(photos=6, renders=0, held_out=4)
  assert "renders_nme_before" not in photos and "renders_nme_after" not in photos
  assert photos["photos_nme_after"] < photos["photos_nme_before"]
  assert decoded == [True, True, True]
  with pytest.raises(ValueError, match="3 faces are too few to hold out every 1th"):
    refinement.refine_cascade(str(start), tmp_path / "none.npz", str(data),
                              sources=["afw", "helen-train"], held_out_every=1)
  proc = _run("experiments.refine_outputs", f"--cascade={setup['cascade']}",
              f"--data_dir={data}", "--sources=lfpw", f"--out={tmp_path / 'x.npz'}")
  lines = _stderr_lines(proc)
  assert proc.returncode == 1 and len(lines) == 1 and "afw" in lines[0] and "lfpw" in lines[0]
  proc = _run("experiments.refine_outputs", f"--data_dir={data}", "--split=val",
              f"--out={tmp_path / 'x.npz'}")
  lines = _stderr_lines(proc)
  assert proc.returncode == 2 and len(lines) == 1 and "validation only" in lines[0]
