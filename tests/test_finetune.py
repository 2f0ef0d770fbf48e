"""Tests of dff_jax.training.finetune: the loss, gradients through images -> encoder -> cascade
-> loss, a few optimizer steps, and resume of the fine-tuning command (tiny encoder, 2 stages,
32 x 32 crops)."""

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from dff_jax import metrics
from dff_jax.alignment import cascade
from dff_jax.training import distill
from dff_jax.training import finetune
from experiments.configs import finetune_tiny

# No LLVM optimisation: compiles in seconds instead of tens of seconds on 2 cores (same numbers
# up to float rounding).
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture(scope="module")
def config(tiny_bundle):
  config = finetune_tiny.get_config()
  config.checkpoint = str(tiny_bundle)
  return config


@pytest.fixture(scope="module")
def start(config):
  return finetune.load_starting_point(config)


@pytest.fixture(scope="module")
def batch(config):
  source = finetune.face_source(config, int(config.seed), num_examples=16)
  return finetune.step_batch(source, 0, 2, 2, 0, 16)


def random_cascade(start, key, std=0.02):
  """The starting regressors plus small random weights (so that the encoder gets gradients)."""
  keys = jax.random.split(key, 2)
  return {name: value + std * jax.random.normal(k, value.shape)
          for (name, value), k in zip(sorted(start.params["cascade"].items()), keys)}


def test_landmark_loss_is_visible_bbox_nme():
  rng = np.random.default_rng(0)
  truth = rng.uniform(10, 60, (3, 68, 2)).astype(np.float32)
  predicted = truth + rng.normal(0, 2, truth.shape).astype(np.float32)
  visible = rng.random((3, 68)) > 0.3
  loss, nme = finetune.landmark_loss(jnp.asarray(predicted), jnp.asarray(truth),
                                     jnp.asarray(visible), epsilon_px=0.0)
  size = truth.max(1) - truth.min(1)
  errors = np.linalg.norm(predicted - truth, axis=-1)
  expected = (errors * visible).sum(1) / visible.sum(1) / np.sqrt(size[:, 0] * size[:, 1])
  np.testing.assert_allclose(nme, expected, rtol=1e-5)
  np.testing.assert_allclose(loss, expected.mean(), rtol=1e-5)
  # All visible: the library's bbox NME.
  _, nme_all = finetune.landmark_loss(predicted, truth, np.ones((3, 68), bool), epsilon_px=0.0)
  np.testing.assert_allclose(nme_all, metrics.nme(predicted, truth, "bbox"), rtol=1e-5)
  # Finite gradient at zero error; nothing from invisible points; no NaN without visible points.
  grad = jax.grad(lambda p: finetune.landmark_loss(p, truth, visible)[0])(truth)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~visible] == 0)
  empty, _ = finetune.landmark_loss(predicted, truth, np.zeros((3, 68), bool))
  assert float(empty) == 0.0


def test_pose_loss_known_values_and_wrap():
  """Planted: errors of 3, 6 and 9 degrees average to 6; 179 and -179 degrees are 2 apart."""
  true = np.zeros((2, 3), np.float32)
  predicted = np.radians([[3.0, -6.0, 9.0], [179.0, 0.0, 0.0]]).astype(np.float32)
  true[1, 0] = np.radians(-179.0)
  loss, error = finetune.pose_loss(predicted, true, epsilon_rad=0.0)
  np.testing.assert_allclose(error, np.radians([6.0, 2.0 / 3.0]), rtol=1e-5)
  np.testing.assert_allclose(loss, np.radians(6.0 + 2.0 / 3.0) / 2, rtol=1e-5)
  grad = jax.grad(lambda p: finetune.pose_loss(p, true)[0])(jnp.asarray(true))
  assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).max()) < 1e-3  # smooth at zero


def test_pose_term_adds_its_weight_times_the_angle_error(start, batch):
  """The pose term adds exactly pose_weight * pose_loss of the pipeline's own angles; weight 0
  leaves the landmark loss alone (old configs unchanged)."""
  from dff_jax.alignment import cascade as cascade_lib  # pylint: disable=g-import-not-at-top
  pipeline = finetune.Pipeline(start.describer.apply, start.cascade_config, remat=False)
  args = (start.params, start.fixed, start.alignment_model, batch["image"], batch["box"],
          batch["landmarks_px"], batch["landmarks_visible"])

  @_jit  # one compiled program for all four (each compile costs seconds)
  def losses(params, fixed, model, images, boxes, landmarks, visible, pose):
    plain, aux = finetune.pipeline_loss(pipeline, params, fixed, model, images, boxes, landmarks,
                                        visible)
    unchanged, _ = finetune.pipeline_loss(pipeline, params, fixed, model, images, boxes,
                                          landmarks, visible, pose, 0.0)
    # A true pose 10 degrees of yaw away from the prediction: the term is 0.5 * 10/3 degrees.
    result = cascade_lib.align_images(
        functools.partial(pipeline.apply, params["encoder"]), model,
        finetune.join_cascade(params["cascade"], fixed), images, boxes, pipeline.config)
    shifted = jnp.stack([pose[:, 0], result.pitch_rad, result.yaw_rad + jnp.radians(10.0),
                         result.roll_rad, pose[:, 4], pose[:, 5]], axis=1)
    total, taught = finetune.pipeline_loss(pipeline, params, fixed, model, images, boxes,
                                           landmarks, visible, shifted, 0.5)
    return plain, aux, unchanged, total, taught

  plain, aux, unchanged, total, taught = losses(*args, batch["pose"])
  np.testing.assert_allclose(float(unchanged), float(plain), rtol=1e-6)
  assert "pose_error_rad" not in aux
  np.testing.assert_allclose(taught["pose_error_rad"], np.radians(10.0 / 3.0), atol=1e-3)
  d, eps = np.radians(10.0), 1e-3   # pose_loss smooths every angle error: sqrt(d^2 + eps^2)
  np.testing.assert_allclose(float(total) - float(plain),
                             0.5 * (np.sqrt(d * d + eps * eps) + 2 * eps) / 3, rtol=2e-3)
  with pytest.raises(ValueError, match="pose_weight > 0 needs the true pose"):
    finetune.pipeline_loss(pipeline, *args, None, 0.5)


def test_landmarks_3d_targets_planted_poses(start):
  """Planted: the jaw of the 3D convention is the model's jaw-line vertices under the pose.
  Frontal, mean face: (tx + s X, ty - s Y); turned by 90 degrees of yaw the height is kept and
  the image x is the depth, s |Z| from tx; one unit of an identity mode moves the frontal jaw by
  s times that mode's rows. The inner 51 points are the annotation's, untouched."""
  model = start.alignment_model
  face_model = model.face_model
  ids = np.asarray(face_model.landmark_3d_vertex_ids)[:17]
  mean = np.asarray(face_model.mean_vertices)[ids]                     # [17, 3] mm
  s, t = 2.0, np.array([100.0, 120.0])
  ki = face_model.identity_basis.shape[0]
  ke = face_model.expression_basis.shape[0]
  shape = np.zeros((4, ki), np.float32)
  shape[3, 5] = 1.0
  yaw = np.radians([0.0, 90.0, -90.0, 0.0])
  pose = np.stack([np.full(4, s), np.zeros(4), yaw, np.zeros(4), np.full(4, t[0]),
                   np.full(4, t[1])], axis=1).astype(np.float32)
  annotated = np.random.default_rng(0).uniform(0, 200, (4, 68, 2)).astype(np.float32)
  targets = np.asarray(finetune.landmarks_3d_targets(model, annotated, pose, shape,
                                                     np.zeros((4, ke), np.float32)))
  np.testing.assert_array_equal(targets[:, 17:], annotated[:, 17:])
  frontal = np.stack([t[0] + s * mean[:, 0], t[1] - s * mean[:, 1]], axis=1)
  np.testing.assert_allclose(targets[0, :17], frontal, atol=1e-3)
  for turned in targets[1:3, :17]:
    np.testing.assert_allclose(turned[:, 1], frontal[:, 1], atol=1e-3)
    np.testing.assert_allclose(np.abs(turned[:, 0] - t[0]), s * np.abs(mean[:, 2]), atol=1e-3)
  # The two turns see the jaw from opposite sides: mirrored about tx.
  np.testing.assert_allclose(targets[1, :17, 0] - t[0], t[0] - targets[2, :17, 0], atol=1e-3)
  mode = np.asarray(face_model.identity_basis)[5, ids]                # [17, 3]
  np.testing.assert_allclose(targets[3, :17] - targets[0, :17],
                             s * mode[:, :2] * np.array([1.0, -1.0]), atol=1e-3)


def test_landmarks_3d_term_scores_the_3d_points(start, batch):
  """Planted: with the truth made of the prediction's own pose, coefficients and 3D points, the
  3D term is only the loss's smoothing; moving the true pose's translation by (3, 4) px moves
  the 17 jaw targets by 5 px and nothing else, so the term is exactly (17 * 5 + 51 * eps) / 68
  over the targets' box; weight 0 leaves the loss alone."""
  pipeline = finetune.Pipeline(start.describer.apply, start.cascade_config, remat=False)
  from dff_jax.alignment import cascade as cascade_lib  # pylint: disable=g-import-not-at-top

  @_jit
  def losses(params, fixed, model, images, boxes, visible, move):
    result = cascade_lib.align_images(
        functools.partial(pipeline.apply, params["encoder"]), model,
        finetune.join_cascade(params["cascade"], fixed), images, boxes, pipeline.config)
    truth = jax.lax.stop_gradient(result.landmarks_3d_px)
    pose = jnp.stack([result.scale, result.pitch_rad, result.yaw_rad, result.roll_rad,
                      result.translation_px[:, 0] + move[0],
                      result.translation_px[:, 1] + move[1]], axis=1)
    coefficients = (result.shape_coefficients, result.expression_coefficients)
    plain, _ = finetune.pipeline_loss(pipeline, params, fixed, model, images, boxes, truth,
                                      visible)
    unchanged, _ = finetune.pipeline_loss(pipeline, params, fixed, model, images, boxes, truth,
                                          visible, pose, 0.0, coefficients, 0.0)
    total, aux = finetune.pipeline_loss(pipeline, params, fixed, model, images, boxes, truth,
                                        visible, pose, 0.0, coefficients, 0.5)
    targets = finetune.landmarks_3d_targets(model, truth, pose, *coefficients)
    return plain, unchanged, total, aux["nme_3d"], targets, truth

  args = (start.params, start.fixed, start.alignment_model, batch["image"], batch["box"],
          batch["landmarks_visible"])
  _, _, _, nme_same, _, _ = losses(*args, jnp.zeros(2))
  plain, unchanged, total, nme_moved, targets, truth = losses(*args, jnp.array([3.0, 4.0]))
  targets, truth = np.asarray(targets), np.asarray(truth)
  size = np.sqrt(np.prod(targets.max(1) - targets.min(1), axis=-1))
  eps = 1e-3
  assert np.all(np.asarray(nme_same) < 2 * eps / size)
  np.testing.assert_allclose(targets[:, :17] - truth[:, :17], np.broadcast_to([3.0, 4.0],
                                                                              (2, 17, 2)),
                             atol=1e-3)
  expected = (17 * np.sqrt(25 + eps ** 2) + 51 * eps) / 68 / size
  np.testing.assert_allclose(nme_moved, expected, rtol=1e-3)
  np.testing.assert_allclose(float(unchanged), float(plain), rtol=1e-6)
  np.testing.assert_allclose(float(total) - float(plain), 0.5 * expected.mean(), rtol=1e-3)
  with pytest.raises(ValueError, match="landmarks_3d_weight > 0 needs"):
    finetune.pipeline_loss(pipeline, start.params, start.fixed, start.alignment_model,
                           batch["image"], batch["box"], batch["landmarks_px"],
                           batch["landmarks_visible"], batch["pose"], 0.0, (None, None), 0.5)


def test_hidden_layer_is_added_and_learns_at_its_own_rate(config):
  """``config.hidden_units`` adds a no-op hidden layer to the starting cascade; the optimizer
  gives it ``hidden_learning_rate`` (planted: Adam's second step under a constant gradient moves
  every weight by exactly the learning rate, here 1e-2 for the hidden layer and 1e-3 for the
  linear regressors; without the setting the hidden layer takes the regressors' rate)."""
  hidden_config = config.copy_and_resolve_references()
  hidden_config.hidden_units = 4
  hidden_config.hidden_learning_rate = 1e-2
  start = finetune.load_starting_point(hidden_config)
  trained = start.params["cascade"]
  assert trained["hidden_weights"].shape[-1] == 4
  np.testing.assert_array_equal(trained["output_weights"], 0.0)
  params = {"encoder": {}, "cascade": trained}
  grads = jax.tree.map(lambda x: jnp.full_like(x, 1e-3), params)
  for rate, expected_hidden in ((1e-2, 1e-2), (0.0, 1e-3)):
    hidden_config.hidden_learning_rate = rate
    optimizer = finetune.make_optimizer(hidden_config)
    state = optimizer.init(params)
    for _ in range(2):  # step 0 is the warm-up's zero learning rate
      updates, state = optimizer.update(grads, state, params)
    for name, value in updates["cascade"].items():
      want = expected_hidden if name in finetune.HIDDEN else 1e-3
      np.testing.assert_allclose(np.abs(np.asarray(value)), want, rtol=1e-3)


def _loss_fn(start, config, batch):
  pipeline = finetune.Pipeline(start.describer.apply, start.cascade_config, remat=True)

  def loss(images, encoder, cascade_weights, fixed):
    params = {"encoder": encoder, "cascade": cascade_weights}
    return finetune.pipeline_loss(pipeline, params, fixed, start.alignment_model, images,
                                  batch["box"], batch["landmarks_px"],
                                  batch["landmarks_visible"])[0]
  return loss


def test_gradients_through_the_whole_pipeline_match_finite_differences(start, config, batch):
  """check_grads (order 1, reverse mode) of images -> encoder -> 2-stage cascade -> NME loss with
  respect to the images, the encoder parameters and the regressors, float32."""
  loss = _loss_fn(start, config, batch)
  cascade_weights = random_cascade(start, jax.random.key(0))
  images = jnp.asarray(batch["image"], jnp.float32)
  # Plain jit: check_grads differentiates f, and compiler options are for top-level jits only.
  f = jax.jit(lambda images, encoder, weights: loss(images, encoder, weights, start.fixed))
  args = (images, start.params["encoder"], cascade_weights)
  grads = _jit(jax.grad(f, argnums=(0, 1, 2)))(*args)
  for leaf in jax.tree_util.tree_leaves(grads):
    assert np.all(np.isfinite(leaf))
  assert float(jnp.abs(grads[0]).max()) > 0
  assert max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(grads[1])) > 0
  # float32 central differences of an O(0.2) loss: eps trades truncation (ReLU, bilinear and
  # visibility kinks) against round-off, per argument. Measured: the parameters' directional
  # derivatives (O(0.3-3)) agree to 0.5-4 % at eps = 1e-3; the images' (O(1e-4) per unit
  # random direction of 0-255 intensities) to ~1-5 % at eps = 0.1.
  check_grads(lambda encoder, weights: f(images, encoder, weights), args[1:], order=1,
              modes=["rev"], eps=1e-3, atol=2e-2, rtol=6e-2)
  check_grads(lambda x: f(x, *args[1:]), args[:1], order=1, modes=["rev"], eps=0.1, atol=2e-5,
              rtol=6e-2)


def test_gradients_finite_at_90_degrees_yaw_and_boxes_outside_the_image(start, config, batch):
  """Finite loss and gradients (images, encoder, regressors) when the cascade starts at 90
  degrees yaw and one face box lies mostly outside the image."""
  fixed = dict(start.fixed, initial_pose=start.fixed["initial_pose"].at[2].set(np.pi / 2))
  boxes = np.asarray(batch["box"]).copy()
  boxes[1] += np.asarray([-30.0, -25.0, -30.0, -25.0], np.float32)  # Mostly above-left.
  batch = dict(batch, box=boxes)
  loss = _loss_fn(start, config, batch)
  cascade_weights = random_cascade(start, jax.random.key(1))
  images = jnp.asarray(batch["image"], jnp.float32)
  value, grads = _jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(
      images, start.params["encoder"], cascade_weights, fixed)
  assert np.isfinite(float(value))
  for leaf in jax.tree_util.tree_leaves(grads):
    assert np.all(np.isfinite(leaf))
  assert float(jnp.abs(grads[2]["landmark_weights"]).max()) > 0


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(start, config, batch):
  pipeline = finetune.Pipeline(start.describer.apply, start.cascade_config, remat=True)
  state = finetune.init_state(config, {"encoder": start.params["encoder"],
                                       "cascade": random_cascade(start, jax.random.key(2))})
  step = _jit(functools.partial(finetune.train_step, pipeline=pipeline, config=config))
  batch = jax.tree.map(jnp.asarray, batch)
  losses = []
  for _ in range(6):
    state, out = step(state, batch, start.fixed, start.alignment_model)
    losses.append(float(out["loss"]))
  assert int(state.step) == 6
  assert all(np.isfinite(losses))
  assert losses[-1] < 0.9 * losses[0], losses


def test_resume_is_bit_identical_to_an_uninterrupted_run(config, tmp_path):
  def run(workdir, num_steps):
    c = config.copy_and_resolve_references()
    c.num_steps, c.schedule_steps, c.num_eval_faces = num_steps, 4, 0
    return finetune.finetune_and_evaluate(c, workdir, log=lambda m: None)

  first = run(tmp_path / "resumed", 2)
  assert first["steps"] == 2
  from dff_jax.alignment import io as cascade_io  # pylint: disable=g-import-not-at-top
  first_cascade, _, _ = cascade_io.load_cascade(tmp_path / "resumed" / "cascade_dff.npz")
  first_bundle = (tmp_path / "resumed" / "bundle" / "encoder_params.msgpack").read_bytes()
  resumed = run(tmp_path / "resumed", 4)
  straight = run(tmp_path / "straight", 4)
  assert resumed["steps"] == straight["steps"] == 4
  assert resumed["params_digest"] == straight["params_digest"]
  assert first["params_digest"] != straight["params_digest"]
  assert (tmp_path / "resumed" / "bundle" / "encoder_params.msgpack").exists()
  params, cascade_config, meta = cascade_io.load_cascade(tmp_path / "resumed" / "cascade_dff.npz")
  assert cascade_config.num_stages == 2 and meta["finetune_steps"] == 4
  # The exported bundle loads as a describer.
  from dff_jax.alignment import features  # pylint: disable=g-import-not-at-top
  assert features.dff_describer(tmp_path / "resumed" / "bundle").descriptor_dim == 8
  # The pair of the kept checkpoint at step 2, exported after the run went on to step 4, is the
  # pair the first run wrote when it ended at step 2.
  c = config.copy_and_resolve_references()
  c.num_steps, c.schedule_steps, c.num_eval_faces = 4, 4, 0
  exported = finetune.export_checkpoint(c, tmp_path / "resumed", 2, tmp_path / "step2")
  step2, _, meta2 = cascade_io.load_cascade(exported["cascade"])
  assert meta2["finetune_steps"] == 2 and meta2["descriptor_source"] == exported["bundle"]
  for name in cascade.STAGE_FIELDS + ("initial_pose",):
    if getattr(first_cascade, name) is not None:
      np.testing.assert_array_equal(getattr(step2, name), getattr(first_cascade, name))
  assert not np.array_equal(step2.landmark_weights, params.landmark_weights)
  assert (Path(exported["bundle"]) / "encoder_params.msgpack").read_bytes() == first_bundle
  with pytest.raises(ValueError, match=r"no checkpoint at step 3; it has steps \[2, 4\]"):
    finetune.export_checkpoint(c, tmp_path / "resumed", 3, tmp_path / "step3")


def _kept_params(workdir, step):
  """The raw trained parameters of ``workdir``'s checkpoint at ``step`` (NumPy)."""
  from dff_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  restored = checkpoint_lib.restore_on_one_device(
      Path(workdir) / "checkpoints" / str(step) / "default")
  return jax.tree.map(np.asarray, restored["params"])


def _exported_pair(cascade_path, bundle_dir):
  """``(landmark_weights, encoder params)`` of an exported pair."""
  from dff_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import io as cascade_io  # pylint: disable=g-import-not-at-top
  params, _, meta = cascade_io.load_cascade(cascade_path)
  encoder, _ = checkpoint_lib.load_encoder_params(bundle_dir)
  return params.landmark_weights, encoder, meta


def test_exporting_several_steps_writes_the_average_of_their_parameters(config, tmp_path):
  """``export_checkpoint(steps=[2, 4])``: every exported weight is the mean of the two kept
  checkpoints' raw weights (read straight from Orbax); the meta lists the steps; a step that was
  not kept is named in the error."""
  c = config.copy_and_resolve_references()
  c.num_steps, c.num_eval_faces, c.checkpoint_every, c.max_checkpoints_to_keep = 4, 0, 2, 5
  finetune.finetune_and_evaluate(c, tmp_path / "run", log=lambda m: None)
  kept = [_kept_params(tmp_path / "run", step) for step in (2, 4)]
  assert not np.allclose(kept[0]["cascade"]["landmark_weights"],
                         kept[1]["cascade"]["landmark_weights"])
  written = finetune.export_checkpoint(c, tmp_path / "run", [4, 2], tmp_path / "avg")
  weights, encoder, meta = _exported_pair(written["cascade"], written["bundle"])
  assert meta["averaged_steps"] == [2, 4] and meta["finetune_steps"] == 4
  np.testing.assert_allclose(weights, (kept[0]["cascade"]["landmark_weights"]
                                       + kept[1]["cascade"]["landmark_weights"]) / 2, atol=1e-7)
  expected = jax.tree.map(lambda a, b: (a + b) / 2, kept[0]["encoder"], kept[1]["encoder"])
  jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, atol=1e-7), encoder,
               expected)
  with pytest.raises(ValueError, match=r"no checkpoint at step 1, 3; it has steps \[2, 4\]"):
    finetune.export_checkpoint(c, tmp_path / "run", [1, 2, 3], tmp_path / "bad")


def test_update_ema_planted_geometric_decay():
  """Towards fixed parameters ``p`` from ``e0``, n updates leave ``p + decay^n (e0 - p)``."""
  e0 = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(4.0)}
  p = {"a": jnp.array([3.0, 0.0]), "b": jnp.array(0.0)}
  ema = e0
  for _ in range(5):
    ema = finetune.update_ema(ema, p, 0.8)
  jax.tree.map(lambda got, a, b: np.testing.assert_allclose(got, b + 0.8 ** 5 * (a - b),
                                                            rtol=1e-6), ema, e0, p)


def test_a_run_with_ema_decay_exports_the_moving_average_of_its_steps(config, tmp_path):
  """With ``config.ema_decay = 0.5`` the run's pair (and ``load_encoder_params`` of its workdir)
  holds ``e_k = e_{k-1} + 0.5 (p_k - e_{k-1})`` over the raw parameters ``p_k`` of the kept
  checkpoints after each step, from ``e_0`` = the starting parameters; the raw parameters are
  not what it exports. A decay outside [0, 1) is refused."""
  from dff_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  c = config.copy_and_resolve_references()
  c.num_steps, c.num_eval_faces, c.checkpoint_every, c.max_checkpoints_to_keep = 3, 0, 1, 5
  c.ema_decay = 0.5
  finetune.finetune_and_evaluate(c, tmp_path, log=lambda m: None)
  start = finetune.load_starting_point(c)
  ema = jax.tree.map(np.asarray, start.params)
  for step in (1, 2, 3):
    raw = _kept_params(tmp_path, step)
    ema = jax.tree.map(lambda e, p: e + 0.5 * (p - e), ema, raw)
  weights, encoder, _ = _exported_pair(tmp_path / "cascade_dff.npz", tmp_path / "bundle")
  np.testing.assert_allclose(weights, ema["cascade"]["landmark_weights"], atol=1e-6)
  assert not np.allclose(weights, raw["cascade"]["landmark_weights"], atol=1e-6)
  jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, atol=1e-6), encoder,
               ema["encoder"])
  from_workdir, _ = checkpoint_lib.load_encoder_params(tmp_path)
  jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, atol=1e-6),
               from_workdir, ema["encoder"])
  c.ema_decay = 1.0
  with pytest.raises(ValueError, match="ema_decay=1.0 must be in"):
    finetune.init_state(c, start.params)


def test_training_loop_stops_on_nan_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
  from dff_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from dff_jax import progress  # pylint: disable=g-import-not-at-top
  from dff_jax import train  # pylint: disable=g-import-not-at-top

  def step_fn(state, batch):
    loss = float("nan") if int(state["step"]) == 3 else 1.0 / (1 + int(state["step"]))
    return ({"step": state["step"] + 1, "w": state["w"] + batch},
            {"loss": loss, "grad_norm": 1.0})

  checkpointer = checkpoint_lib.Checkpointer(tmp_path, save_interval_steps=2)
  writer = progress.MetricsWriter(tmp_path / "metrics.jsonl")
  state = {"step": np.zeros((), np.int32), "w": np.zeros(2, np.float32)}
  from dff_jax.training import loop  # pylint: disable=g-import-not-at-top
  with pytest.raises(train.NonFiniteLossError, match="at step 3"):
    loop.run_training_loop(
        step_fn, state, iter([np.ones(2, np.float32)] * 10), start_step=0, num_steps=10,
        checkpointer=checkpointer, writer=writer, bar=progress.ProgressBar(10, enabled=False),
        log_every=1, items_per_step=2)
  assert checkpoint_lib.Checkpointer(tmp_path).latest_step() == 2
  assert [r["step"] for r in progress.read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_distill_loss_planted_values():
  """Equal pyramids give 0, a student of zeros 1, and a level 10 % too large 0.01 (averaged
  with an exact level: 0.005), whatever the levels' scales."""
  rng = np.random.default_rng(0)
  teacher = [rng.normal(0, 3, (2, 8, 8, 4)), rng.normal(0, 0.1, (2, 4, 4, 8))]
  assert float(distill.distill_loss(teacher, teacher)) == 0.0
  np.testing.assert_allclose(distill.distill_loss([np.zeros_like(t) for t in teacher], teacher),
                             1.0, rtol=1e-6)
  np.testing.assert_allclose(distill.distill_loss([1.1 * teacher[0], teacher[1]], teacher),
                             0.005, rtol=1e-4)
  with pytest.raises(ValueError, match="differ"):
    distill.distill_loss([teacher[0][:, :4]], [teacher[0]])


def test_transfer_params_copies_same_path_and_shape_only():
  source = {"a": {"kernel": np.ones((3, 3, 1, 4)), "bias": np.ones(4)}, "b": np.ones(2)}
  target = {"a": {"kernel": np.zeros((3, 3, 1, 4)), "bias": np.zeros(5)}, "c": np.zeros(2)}
  params, copied = distill.transfer_params(source, target)
  assert copied == 1
  np.testing.assert_array_equal(params["a"]["kernel"], 1.0)
  np.testing.assert_array_equal(params["a"]["bias"], np.zeros(5))
  np.testing.assert_array_equal(params["c"], np.zeros(2))


def test_student_starts_from_its_teacher_and_is_pulled_towards_it(config, start, batch):
  """A student of the teacher's own shape starts as the teacher (distillation term exactly 0, the
  loss unchanged); a student with a second convolution at level 1 keeps every other parameter of
  the teacher, and its distillation term is positive and has gradients."""
  same, same_config = distill.make_student(start.describer, {}, 32, seed=3)
  assert same_config["convs_per_level"] == 1
  jax.tree.map(np.testing.assert_array_equal, same.params, start.describer.params)
  fixed = dict(start.fixed, teacher=start.describer.params)
  args = (start.params, fixed, start.alignment_model, batch["image"], batch["box"],
          batch["landmarks_px"], batch["landmarks_visible"])
  def loss_of(pipeline):  # jitted: eager dispatch of the whole pipeline costs tens of seconds
    return _jit(lambda *a: finetune.pipeline_loss(pipeline, *a))(*args)

  plain, _ = loss_of(finetune.Pipeline(start.describer.apply, start.cascade_config, remat=False))
  loss, aux = loss_of(finetune.Pipeline(same.apply, start.cascade_config, remat=False,
                                        teacher_apply=start.describer.apply, distill_weight=2.0))
  assert float(aux["distill"]) == 0.0
  np.testing.assert_allclose(float(loss), float(plain), rtol=1e-6)

  thicker, thicker_config = distill.make_student(start.describer, {"convs_per_level": (1, 2)},
                                                  32, seed=3)
  assert thicker_config["convs_per_level"] == [1, 2]
  assert "Conv_1" in thicker.params["encoder_1"]
  from flax.traverse_util import flatten_dict  # pylint: disable=g-import-not-at-top
  theirs, ours = flatten_dict(start.describer.params), flatten_dict(thicker.params)
  assert set(ours) - set(theirs) == {("encoder_1", "Conv_1", "kernel"),
                                     ("encoder_1", "GroupNorm_1", "scale"),
                                     ("encoder_1", "GroupNorm_1", "bias")}
  for path, value in theirs.items():
    np.testing.assert_array_equal(ours[path], value)
  # The other way (as finetune_student_l0 drops level 0's second convolution): a thinner student
  # of the thicker one has exactly the first teacher's parameters, those three left behind.
  from dff_jax import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
  module = encoder_lib.encoder_from_config(dict(thicker_config, convs_per_level=[1, 1]))
  fresh = module.init(jax.random.PRNGKey(4), jnp.zeros((1, 32, 32, start.describer.channels)))
  thinner, copied = distill.transfer_params(thicker.params, fresh["params"])
  thin = flatten_dict(thinner)
  assert set(thin) == set(theirs) and copied == len(thin)
  for path, value in theirs.items():
    np.testing.assert_array_equal(thin[path], value)
  taught = finetune.Pipeline(thicker.apply, start.cascade_config, remat=False,
                             teacher_apply=start.describer.apply, distill_weight=1.0)
  params = dict(start.params, encoder=thicker.params)

  def distill_term(encoder):
    return finetune.pipeline_loss(taught, dict(params, encoder=encoder), *args[1:])[1]["distill"]

  value, grads = _jit(jax.value_and_grad(distill_term))(thicker.params)
  assert float(value) > 0.0
  assert float(jnp.abs(grads["encoder_1"]["Conv_1"]["kernel"]).max()) > 0.0


def test_finetuning_a_student_exports_its_own_encoder(config, tmp_path):
  """The command with ``config.student``: the bundle holds the student's configuration and
  loads as a describer; the distillation term is logged."""
  c = config.copy_and_resolve_references()
  c.num_steps, c.num_eval_faces = 2, 0
  import ml_collections  # pylint: disable=g-import-not-at-top
  c.student = ml_collections.ConfigDict(dict(convs_per_level=(1, 2)))
  c.distill_weight = 1.0
  finetune.finetune_and_evaluate(c, tmp_path, log=lambda m: None)
  from dff_jax import progress  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import features  # pylint: disable=g-import-not-at-top
  records = progress.read_metrics(tmp_path / "metrics.jsonl")
  assert all(r["distill"] > 0 for r in records)
  describer = features.dff_describer(tmp_path / "bundle")
  assert "Conv_1" in describer.params["encoder_1"] and describer.descriptor_dim == 8


def test_training_through_mirroring_has_gradients(start, batch):
  """``Pipeline.mirror`` (``config.mirror``) trains through test-time mirroring: the loss
  differs from the plain one and its gradients reach the encoder and every regressor, finite."""
  params = dict(start.params, cascade=random_cascade(start, jax.random.key(3)))
  args = (params, start.fixed, start.alignment_model, batch["image"], batch["box"],
          batch["landmarks_px"], batch["landmarks_visible"])

  def loss(mirror, params, *rest):
    pipeline = finetune.Pipeline(start.describer.apply, start.cascade_config, remat=False,
                                 mirror=mirror)
    return finetune.pipeline_loss(pipeline, params, *rest)[0]

  mirrored, grads = _jit(jax.value_and_grad(functools.partial(loss, True)))(*args)
  plain = _jit(functools.partial(loss, False))(*args)
  assert np.isfinite(float(mirrored)) and abs(float(mirrored) - float(plain)) > 1e-6
  for name, tree in (("encoder", grads["encoder"]), ("cascade", grads["cascade"])):
    leaves = jax.tree_util.tree_leaves(tree)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves), name
    assert max(float(jnp.abs(g).max()) for g in leaves) > 0, name


def test_a_calibrated_starting_cascade_keeps_its_output_calibration(config, tmp_path):
  """Fine-tuning from a cascade file with ``output_offsets_mm`` trains through them (the starting
  point's alignment model holds them) and writes them into the fine-tuned cascade's meta."""
  from dff_jax.alignment import io as cascade_io  # pylint: disable=g-import-not-at-top
  c = config.copy_and_resolve_references()
  zero = finetune.load_starting_point(c)
  offsets = np.zeros((68, 3), np.float32)
  offsets[17:] = np.random.default_rng(0).normal(0, 1.0, (51, 3)).round(3)
  path = cascade_io.save_cascade(
      tmp_path / "start.npz", finetune.join_cascade(zero.params["cascade"], zero.fixed),
      zero.cascade_config, dict(features="dff", descriptor_dim=8, face_model="default",
                                output_offsets_mm=offsets.tolist()), compact=False)
  c.cascade, c.num_steps, c.num_eval_faces = str(path), 1, 0
  np.testing.assert_array_equal(finetune.load_starting_point(c).alignment_model.output_offsets,
                                offsets)
  finetune.finetune_and_evaluate(c, tmp_path / "run", log=lambda m: None)
  _, _, meta = cascade_io.load_cascade(tmp_path / "run" / "cascade_dff.npz")
  np.testing.assert_allclose(meta["output_offsets_mm"], offsets, atol=1e-4)
