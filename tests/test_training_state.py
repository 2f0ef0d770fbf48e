"""What training changes and what resuming restores, with answers known without the code.

* End-to-end fine-tuning (:mod:`dff_jax.training.finetune`, the command's function on the tiny
  config, a random tiny encoder written as a bundle, zero regressors): after 4 steps both the
  encoder (the exported bundle) and the regressors (the written cascade) differ from the start.
  Weight decay is off, so any change of the encoder comes from the loss's gradient.
* Resuming: a workdir with checkpoints at steps 2 and 4 is resumed to step 6; ``metrics.jsonl``
  must hold each of the steps 1..6 exactly once (resuming from an older checkpoint replays
  steps, bit-identically, so comparing final digests cannot tell). The shared
  :func:`dff_jax.train.restore_or_init` restores the latest of three distinct checkpoints.
* Loss weights (:func:`dff_jax.losses.combined_loss`): inputs whose patch cross-entropy and
  InfoNCE are known in closed form; the total is ``patch_weight * patch + info_nce_weight *
  InfoNCE`` for several weight pairs.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import finetune_tiny


# ----------------------------------------------------------------------------------------------
# End-to-end fine-tuning: what changes, and resuming
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory):
  """A random tiny encoder (32 px grey input, D = 4) as an inference bundle, and its params."""
  from flax import serialization
  from dff_jax import encoder as encoder_lib
  settings = dict(features=(4, 8), descriptor_dim=4, convs_per_level=1, num_groups=2)
  module = encoder_lib.encoder_from_config(settings)
  params = module.init(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 1)))["params"]
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  bundle = tmp_path_factory.mktemp("random_encoder") / "bundle"
  bundle.mkdir()
  (bundle / "encoder_params.msgpack").write_bytes(serialization.msgpack_serialize(params))
  (bundle / "config.json").write_text(json.dumps(dict(
      encoder=dict(settings, channels=1), image_size=32, channels=1, step=0, experiment={})))
  return bundle, params


def _config(bundle, num_steps):
  config = finetune_tiny.get_config()
  config.checkpoint = str(bundle)
  config.num_steps = num_steps
  config.schedule_steps = 6   # one learning-rate horizon for the 4- and 6-step runs
  config.num_eval_faces = 0
  config.weight_decay = 0.0   # an encoder change can then only come from the gradient
  config.checkpoint_every = 2
  config.max_checkpoints_to_keep = 2
  return config


@pytest.fixture(scope="module")
def finetuned(random_bundle, tmp_path_factory):
  """4 fine-tuning steps from the random encoder and zero regressors (checkpoints 2 and 4)."""
  from dff_jax.training import finetune
  bundle, _ = random_bundle
  workdir = tmp_path_factory.mktemp("finetune") / "workdir"
  summary = finetune.finetune_and_evaluate(_config(bundle, 4), workdir, log=lambda m: None)
  return workdir, summary


def _leaves(tree):
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_finetuning_changes_the_encoder_and_the_regressors(random_bundle, finetuned):
  from dff_jax import checkpoint as checkpoint_lib
  from dff_jax.alignment import io as cascade_io
  _, start = random_bundle
  workdir, summary = finetuned
  assert summary["steps"] == 4
  # Regressors: zero at the start, trained by Adam (every stage, landmarks and pose).
  params, _, _ = cascade_io.load_cascade(workdir / "cascade_dff.npz")
  for name in ("landmark_weights", "pose_weights"):
    weights = np.asarray(getattr(params, name))
    for stage in range(weights.shape[0]):
      assert np.any(weights[stage] != 0), f"{name} of stage {stage} never changed"
  # Encoder: the exported bundle against the starting parameters, leaf by leaf.
  tuned, _ = checkpoint_lib.load_encoder_params(workdir / "bundle")
  before, after = _leaves(start), _leaves(tuned)
  assert before.keys() == after.keys()
  changed = [k for k in before if not np.array_equal(before[k], after[k])]
  assert len(changed) >= 0.8 * len(before), f"encoder leaves unchanged: {sorted(set(before) - set(changed))}"
  kernels = [k for k in before if before[k].ndim == 4]
  assert kernels and all(k in changed for k in kernels)


def test_resume_restores_the_latest_checkpoint_and_logs_each_step_once(random_bundle, finetuned):
  from dff_jax import checkpoint as checkpoint_lib
  from dff_jax import progress
  from dff_jax.training import finetune
  bundle, _ = random_bundle
  workdir, _ = finetuned
  assert checkpoint_lib.Checkpointer(workdir, max_to_keep=2).all_steps() == [2, 4]
  summary = finetune.finetune_and_evaluate(_config(bundle, 6), workdir, log=lambda m: None)
  assert summary["steps"] == 6
  steps = [r["step"] for r in progress.read_metrics(workdir / "metrics.jsonl", kind="train")]
  assert steps == [1, 2, 3, 4, 5, 6], steps


def test_restore_or_init_restores_the_latest_of_several_checkpoints(tmp_path):
  from dff_jax import checkpoint as checkpoint_lib
  from dff_jax import train as train_lib
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, max_to_keep=3, save_interval_steps=1)
  for step in (2, 4, 6):
    state = {"step": jnp.asarray(step, jnp.int32), "w": jnp.full((3,), float(step), jnp.float32)}
    checkpointer.save(step, state)
  checkpointer.close()
  abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32),
              "w": jax.ShapeDtypeStruct((3,), jnp.float32)}
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shardings = jax.tree.map(lambda _: sharding, abstract)
  reopened = checkpoint_lib.Checkpointer(tmp_path, max_to_keep=3, save_interval_steps=1)
  try:
    restored = train_lib.restore_or_init(reopened, abstract, shardings,
                                         lambda: pytest.fail("initialised instead of restoring"))
  finally:
    reopened.close()
  assert int(restored["step"]) == 6
  np.testing.assert_array_equal(restored["w"], [6.0, 6.0, 6.0])


# ----------------------------------------------------------------------------------------------
# Loss weights
# ----------------------------------------------------------------------------------------------

SIZE, K, P, LOGIT_SCALE, TEMPERATURE = 8, 5, 4, 3.0, 0.5


def _loss_inputs():
  """Views whose descriptors are one-hot: pixel (i, j) of both views has the descriptor
  e_{(i + j) mod P} ... for the patch loss, and the K correspondences sit on pixels whose
  descriptors are e_0 .. e_{K-1}, the same in both views (for InfoNCE)."""
  dim = max(K, P)
  index = np.zeros((SIZE, SIZE), np.int64)
  points = [(1, 1), (2, 5), (4, 3), (6, 6), (7, 0)]  # (row, column) of the K correspondences
  for k, (i, j) in enumerate(points):
    index[i, j] = k
  descriptors = np.eye(dim, dtype=np.float32)[index]  # [H, W, D] one-hot
  desc = jnp.asarray(np.stack([descriptors, descriptors]))[None].reshape(
      1, 2, SIZE, SIZE, dim)
  points_px = np.array([[j + 0.5, i + 0.5] for i, j in points], np.float32)[None]
  # Patch labels: a vertex per pixel; the patch of vertex v is v mod P in every segmentation.
  vertex_ids = np.arange(2 * SIZE * SIZE, dtype=np.int32).reshape(1, 2, SIZE, SIZE)
  vertex_ids[0, 0, 0, :3] = -1  # background pixels, ignored
  patch_table = np.tile(np.arange(2 * SIZE * SIZE, dtype=np.int32) % P, (2, 1))
  # Classifier: weight[g] maps descriptor e_d to logit 1 for patch d (d < P), bias 0.
  weight = np.zeros((2, dim, P), np.float32)
  weight[:, np.arange(P), np.arange(P)] = 1.0
  classifiers = {"weight": jnp.asarray(weight), "bias": jnp.zeros((2, P), jnp.float32)}
  batch = dict(vertex_ids=jnp.asarray(vertex_ids), points_a_px=jnp.asarray(points_px),
               points_b_px=jnp.asarray(points_px), valid=jnp.ones((1, K), bool))
  return desc[:, 0], desc[:, 1], batch, jnp.asarray(patch_table), classifiers, index, vertex_ids


def _closed_forms():
  """The patch cross-entropy and InfoNCE of :func:`_loss_inputs`, by hand."""
  _, _, _, _, _, index, vertex_ids = _loss_inputs()
  hot = np.exp(LOGIT_SCALE)
  total, count = 0.0, 0
  for view in range(2):
    for i in range(SIZE):
      for j in range(SIZE):
        vertex = vertex_ids[0, view, i, j]
        if vertex < 0:
          continue
        label, d = vertex % P, index[i, j]
        # logits: LOGIT_SCALE at patch d (if d < P), 0 elsewhere.
        partition = hot + (P - 1) if d < P else P
        total += -(LOGIT_SCALE if label == d else 0.0) + math.log(partition)
        count += 1
  patch = total / count
  # InfoNCE: similarity matrix = identity; every row and column gives the same cross-entropy.
  info_nce = math.log(1.0 + (K - 1) * math.exp(-1.0 / TEMPERATURE))
  return patch, info_nce


@pytest.mark.parametrize("patch_weight,info_nce_weight", [(1.0, 0.0), (0.0, 1.0), (0.3, 2.0),
                                                          (4.0, 0.25)])
def test_combined_loss_is_the_weighted_sum_of_known_terms(patch_weight, info_nce_weight):
  from dff_jax import losses
  desc_a, desc_b, batch, table, classifiers, _, _ = _loss_inputs()
  patch, info_nce = _closed_forms()
  config = dict(patch_weight=patch_weight, info_nce_weight=info_nce_weight,
                temperature=TEMPERATURE, logit_scale=LOGIT_SCALE, num_pixels_per_image=0)
  loss, metrics = losses.combined_loss(config, desc_a, desc_b, batch, patch_table=table,
                                       classifier_params=classifiers,
                                       segmentation_ids=jnp.array([1, 0], jnp.int32))
  np.testing.assert_allclose(loss, patch_weight * patch + info_nce_weight * info_nce, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], loss)
  if patch_weight:
    np.testing.assert_allclose(metrics["patch/loss"], patch, rtol=1e-5)
  else:
    assert "patch/loss" not in metrics
  if info_nce_weight:
    np.testing.assert_allclose(metrics["info_nce/loss"], info_nce, rtol=1e-5)
    np.testing.assert_allclose(metrics["info_nce/accuracy"], 1.0)
  else:
    assert "info_nce/loss" not in metrics
