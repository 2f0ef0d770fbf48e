"""DFF training: TrainState, sharded train / eval steps and ``train_and_evaluate(config, workdir)``.

One code path for one CPU core, 8 fake devices and a multi-host pod:

* **Mesh** (:mod:`dff_jax.training.sharding`). ``jax.make_mesh((data, fsdp), ("data", "fsdp"))``
  over all devices. The batch is
  split over both axes; parameters and optimizer state are replicated
  (``config.sharding.params = "replicated"``) or each leaf is split along its largest axis that
  divides by the ``fsdp`` size (``"fsdp"``). No ``pmap``.
* **Data** (:mod:`dff_jax.training.data`). ``data_pipeline.pairs.PairSource`` (random access,
  sample ``i`` a pure function of ``(seed, i)``) through a grain ``MapDataset``: element ``i`` of the global batch of step ``t``
  is sample ``(t * global_batch + i) mod len(source)``, and process ``p`` of ``n`` reads rows
  ``[p * global_batch / n, (p + 1) * global_batch / n)`` of it. The data stream is thus a pure
  function of ``(config.data.seed, step)`` and a resumed run sees exactly the batches it would
  have seen. ``config.num_workers > 0`` renders in grain worker processes.
  Per-process arrays become global ``jax.Array`` s with ``jax.make_array_from_process_local_data``.
* **Step.** One ``jax.jit`` with in / out shardings and the state donated. The loss is
  :func:`dff_jax.losses.combined_loss` (the paper's patch classification, InfoNCE, or a weighted
  sum, from ``config.loss``); labels come from the sample's ``vertex_ids`` and a table of random
  mesh segmentations (``dff_jax.face_model.segmentation.random_segmentations``), computed once and
  cached in the workdir.
* **Loop** (:mod:`dff_jax.training.loop`, shared with end-to-end fine-tuning). **Checkpoints**
  (:mod:`dff_jax.checkpoint`): periodic, final, resume from the workdir; a
  non-finite loss stops training with the step number and keeps the last good checkpoint.
* **Progress** (:mod:`dff_jax.progress`): a tqdm bar, ``metrics.jsonl`` and a held-out eval
  (loss and nearest-descriptor PCK) every ``config.eval_every`` steps.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec as P

from dff_jax import checkpoint as checkpoint_lib
from dff_jax import descriptor_fields
from dff_jax import encoder as encoder_lib
from dff_jax import losses as losses_lib
from dff_jax import progress as progress_lib
from dff_jax.training import data as data_lib
from dff_jax.training import loop as loop_lib
from dff_jax.training import sharding as sharding_lib

Array = Any
PyTree = Any

# Fields of a pipeline sample the training / eval steps use (views 0 and 1 only).
BATCH_FIELDS = ("images", "vertex_ids", "points_a_px", "points_b_px", "valid")


# ----------------------------------------------------------------------------------------------
# Train state and optimizer
# ----------------------------------------------------------------------------------------------


class TrainState(struct.PyTreeNode):
  """Everything a resumed run needs (a pytree; Orbax saves it whole).

  Attributes:
    step: ``[]`` int32, number of optimizer steps taken.
    params: ``{"encoder": flax params of DFFEncoder, "classifiers": {"weight": [S, D, P],
      "bias": [S, P]}}`` float32 (``classifiers`` is ``{}`` when the patch loss is off).
    opt_state: optax state of :func:`make_optimizer`.
    rng: ``[2]`` uint32 raw PRNG key; step ``t`` uses ``fold_in(rng, t)``.
  """
  step: Array
  params: PyTree
  opt_state: PyTree
  rng: Array


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from 0 to ``config.learning_rate`` over ``warmup_steps``, then cosine decay
  to ``learning_rate * end_learning_rate_fraction`` at ``num_steps``."""
  warmup = int(min(config.warmup_steps, max(config.num_steps - 1, 0)))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate, warmup_steps=warmup,
      decay_steps=max(int(config.num_steps), warmup + 1),
      end_value=config.learning_rate * config.end_learning_rate_fraction)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Global-norm gradient clipping then AdamW on :func:`make_schedule`; weight decay skips
  biases and normalisation scales (leaves with fewer than 2 dims)."""
  decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # noqa: E731
  return optax.chain(
      optax.clip_by_global_norm(config.grad_clip_norm),
      optax.adamw(make_schedule(config), b1=config.adam_b1, b2=config.adam_b2,
                  weight_decay=config.weight_decay, mask=decay_mask))


def uses_patch_loss(config: ml_collections.ConfigDict) -> bool:
  return float(config.loss.patch_weight or 0.0) > 0


def init_params(config: ml_collections.ConfigDict, key: Array) -> PyTree:
  """Fresh parameters: the encoder's for a ``[1, H, W, C]`` input and the patch classifiers."""
  encoder = encoder_lib.encoder_from_config(config.encoder)
  size = int(config.data.image_size)
  encoder_key, classifier_key = jax.random.split(key)
  images = jnp.zeros((1, size, size, int(config.encoder.channels)), jnp.float32)
  params = {"encoder": encoder.init(encoder_key, images)["params"], "classifiers": {}}
  if uses_patch_loss(config):
    params["classifiers"] = losses_lib.init_patch_classifiers(
        classifier_key, int(config.loss.num_segmentations), int(config.encoder.descriptor_dim),
        int(config.loss.num_patches))
  return params


def init_train_state(config: ml_collections.ConfigDict) -> TrainState:
  """The step-0 state for ``config.seed`` (unsharded; see :func:`create_sharded_state`)."""
  key = jax.random.PRNGKey(config.seed)
  init_key, train_key = jax.random.split(key)
  params = init_params(config, init_key)
  if config.get("init_encoder", ""):
    # Continue from a trained encoder (a bundle or workdir); the patch classifiers start afresh.
    if config.get("init_encoder_scope", "all") == "pyramid":
      # Another architecture over the same contracting half (e.g. a U-Net's encoder levels
      # under a point head): copy the encoder_<l> / down_<l> levels, keep the rest fresh.
      encoder_params, _ = checkpoint_lib.load_encoder_params(config.init_encoder)
      params["encoder"] = dict(params["encoder"])
      for name, value in encoder_params.items():
        if name.startswith(("encoder_", "down_")):
          checkpoint_lib.check_same_shapes(
              checkpoint_lib.flat_shapes(params["encoder"][name]),
              checkpoint_lib.flat_shapes(value), f"Pyramid level {name} of {config.init_encoder}")
          params["encoder"][name] = jax.tree.map(jnp.asarray, value)
    else:
      encoder_params, _ = checkpoint_lib.load_encoder_params(config.init_encoder,
                                                            dict(config.encoder))
      params["encoder"] = jax.tree.map(jnp.asarray, encoder_params)
  opt_state = make_optimizer(config).init(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                    rng=train_key)


def create_sharded_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
                         ) -> Tuple[TrainState, TrainState]:
  """``(state, shardings)``: the initial state created directly in its shardings."""
  abstract = jax.eval_shape(lambda: init_train_state(config))
  shardings = sharding_lib.state_shardings(config, mesh, abstract)
  state = jax.jit(lambda: init_train_state(config), out_shardings=shardings,
                  compiler_options=sharding_lib.compiler_options(config))()
  return state, shardings



# ----------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------


def _descriptors(encoder, encoder_params, images_uint8: Array, channels: int) -> Any:
  """``[B, 2, H, W, 3]`` uint8 -> descriptor fields with leading axes ``[B, 2]`` (a dense
  map ``[B, 2, H, W, D]`` float32, or a :class:`dff_jax.descriptor_fields.PointField`)."""
  batch, views, height, width, _ = images_uint8.shape
  images = encoder_lib.preprocess_images(images_uint8, channels)
  images = images.reshape(batch * views, height, width, channels)
  fields = encoder.apply({"params": encoder_params}, images)
  return descriptor_fields.map_faces(lambda x: x.reshape((batch, views) + x.shape[1:]), fields)


def _view(fields: Any, index: int) -> Any:
  """View ``index`` of ``[B, 2, ...]`` fields."""
  return descriptor_fields.map_faces(lambda x: x[:, index], fields)


def _loss_and_metrics(config, encoder, params, batch, patch_table, key):
  key_segments, key_pixels = jax.random.split(key)
  descriptors = _descriptors(encoder, params["encoder"], batch["images"],
                             int(config.encoder.channels))
  patch_kwargs = {}
  if uses_patch_loss(config):
    patch_kwargs = dict(
        patch_table=patch_table, classifier_params=params["classifiers"],
        segmentation_ids=losses_lib.sample_segmentation_ids(
            key_segments, int(config.loss.num_segmentations),
            int(config.loss.num_segmentations_per_step)))
  loss, metrics = losses_lib.combined_loss(
      config.loss, _view(descriptors, 0), _view(descriptors, 1), batch, key=key_pixels,
      **patch_kwargs)
  return loss, (metrics, descriptors)


def train_step(state: TrainState, batch: Mapping[str, Array], patch_table: Array, *,
               config: ml_collections.ConfigDict, encoder, optimizer
               ) -> Tuple[TrainState, Dict[str, Array]]:
  """One optimizer step on a global batch.

  Args:
    state: the current :class:`TrainState`.
    batch: global batch of :func:`dff_jax.training.data.select_fields` arrays with a leading ``[B]`` axis.
    patch_table: ``[S, V]`` int32 segmentation table (``[1, 1]`` dummy when the patch loss is
      off).
    config, encoder, optimizer: static.

  Returns:
    ``(new_state, metrics)``: scalar float32 metrics ``loss``, the loss terms' metrics,
    ``grad_norm``, ``param_norm``, ``learning_rate``.
  """
  key = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    loss, (metrics, _) = _loss_and_metrics(config, encoder, params, batch, patch_table, key)
    if int(config.get("debug_nan_step", -1)) >= 0:  # Test hook: poison one step's loss.
      poison = jnp.where(state.step == int(config.debug_nan_step), jnp.nan, 1.0)
      loss = loss * poison
      metrics = dict(metrics, loss=metrics["loss"] * poison)
    return loss, metrics

  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.global_norm(grads),
                 param_norm=optax.global_norm(params["encoder"]),
                 learning_rate=make_schedule(config)(state.step))
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


def nearest_descriptor_pck(desc_a: Array, desc_b: Array, points_a_px: Array,
                           points_b_px: Array, valid: Array, face_b: Array,
                           thresholds_px: Tuple[float, ...] = (4.0,)) -> Dict[str, Array]:
  """Matching accuracy of nearest-descriptor search, summed over a batch of pairs.

  For each valid point of view a its descriptor (bilinear, re-normalised) is compared with every
  face pixel of view b; the most similar pixel's centre ``(j + 0.5, i + 0.5)`` is the match, and
  it is correct within ``t`` pixels of ``points_b_px``.

  Args:
    desc_a, desc_b: ``[B, H, W, D]`` unit descriptors.
    points_a_px, points_b_px: ``[B, K, 2]`` float32 ``(x, y)`` pixels (x right, y down).
    valid: ``[B, K]`` bool, the point is visible in both views.
    face_b: ``[B, H, W]`` bool, face-model pixels of view b (the search region).
    thresholds_px: PCK thresholds in pixels.

  Returns:
    ``{"num_points": [] float32, "sum_error_px": [] float32, "correct@{t}px": [] float32}``
    sums over the valid points (divide by ``num_points``).
  """
  from dff_jax.sampling import bilinear_sample  # pylint: disable=g-import-not-at-top
  batch, height, width, dim = desc_b.shape

  def one(da, db, pa, pb, ok, face):
    features, inside = bilinear_sample(da, pa)
    features = encoder_lib.l2_normalize(features, axis=-1)  # [K, D]
    similarity = features @ db.reshape(height * width, dim).T  # [K, H*W]
    similarity = jnp.where(face.reshape(-1)[None], similarity, -jnp.inf)
    best = jnp.argmax(similarity, axis=-1)
    predicted = jnp.stack([best % width + 0.5, best // width + 0.5], axis=-1)
    error = jnp.linalg.norm(predicted - pb, axis=-1)
    return error, ok & inside & jnp.any(face)

  errors, mask = jax.vmap(one)(desc_a, desc_b, points_a_px, points_b_px, valid, face_b)
  out = {"num_points": jnp.sum(mask.astype(jnp.float32)),
         "sum_error_px": jnp.sum(jnp.where(mask, errors, 0.0))}
  for t in thresholds_px:
    out[f"correct@{t:g}px"] = jnp.sum((mask & (errors <= t)).astype(jnp.float32))
  return out


def eval_step(state: TrainState, batch: Mapping[str, Array], patch_table: Array, *,
              config: ml_collections.ConfigDict, encoder) -> Dict[str, Array]:
  """Held-out loss (fixed segmentation / pixel key) and PCK sums for one global batch.

  Returns sums over the batch: ``loss_sum`` (loss times pairs), ``num_pairs`` and the sums of
  :func:`nearest_descriptor_pck`.
  """
  key = jax.random.PRNGKey(int(config.eval.seed))
  loss, (_, descriptors) = _loss_and_metrics(config, encoder, state.params, batch, patch_table,
                                             key)
  num_pairs = batch["images"].shape[0]
  out = nearest_descriptor_pck(
      descriptor_fields.to_dense_batch(_view(descriptors, 0)),
      descriptor_fields.to_dense_batch(_view(descriptors, 1)), batch["points_a_px"],
      batch["points_b_px"],
      batch["valid"], batch["vertex_ids"][:, 1] >= 0,
      tuple(float(t) for t in config.eval.pck_thresholds_px))
  out.update(loss_sum=loss * num_pairs, num_pairs=jnp.asarray(num_pairs, jnp.float32))
  return out


def summarize_eval(sums: Mapping[str, float]) -> Dict[str, float]:
  """Eval sums -> ``loss``, ``mean_error_px``, ``pck@{t}px`` (fractions of valid points)."""
  points = max(float(sums["num_points"]), 1.0)
  out = {"loss": float(sums["loss_sum"]) / max(float(sums["num_pairs"]), 1.0),
         "mean_error_px": float(sums["sum_error_px"]) / points,
         "num_points": float(sums["num_points"])}
  for key, value in sums.items():
    if key.startswith("correct@"):
      out["pck@" + key[len("correct@"):]] = float(value) / points
  return out


def make_jitted_steps(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                      shardings: TrainState) -> Tuple[Callable, Callable]:
  """``(train_step, eval_step)`` jitted with in / out shardings; train donates the state."""
  encoder = encoder_lib.encoder_from_config(config.encoder)
  optimizer = make_optimizer(config)
  replicated = NamedSharding(mesh, P())
  data = sharding_lib.batch_sharding(mesh)
  train = jax.jit(
      functools.partial(train_step, config=config, encoder=encoder, optimizer=optimizer),
      in_shardings=(shardings, data, replicated), out_shardings=(shardings, replicated),
      donate_argnums=(0,), compiler_options=sharding_lib.compiler_options(config))
  evaluate = jax.jit(functools.partial(eval_step, config=config, encoder=encoder),
                     in_shardings=(shardings, data, replicated), out_shardings=replicated,
                     compiler_options=sharding_lib.compiler_options(config))
  return train, evaluate


# ----------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------


def restore_or_init(checkpointer: checkpoint_lib.Checkpointer, abstract: PyTree, shardings: PyTree,
                    init: Callable[[], PyTree]) -> PyTree:
  """The latest checkpoint of ``checkpointer`` restored onto ``shardings`` (the state's structure
  and dtypes from ``abstract``, e.g. ``jax.eval_shape`` of the initialiser), or ``init()`` when
  the workdir has none (a fresh run)."""
  latest = checkpointer.latest_step()
  if latest is None:
    return init()
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract, shardings)
  state = checkpointer.restore(target, latest)
  logging.info("Resumed from %s at step %d", checkpointer.directory, latest)
  return state


NonFiniteLossError = loop_lib.NonFiniteLossError  # Raised by the loop; kept here for callers.


def check_steps_and_batch(config: ml_collections.ConfigDict) -> None:
  """Raises ``ValueError`` unless ``config.num_steps >= 1`` and ``config.global_batch_size`` is a
  multiple of the device count (every trainer's first check)."""
  if int(config.num_steps) < 1:
    raise ValueError(f"config.num_steps must be >= 1, got {config.num_steps}.")
  if int(config.global_batch_size) % jax.device_count():
    raise ValueError(f"global_batch_size={config.global_batch_size} must be a multiple of the "
                     f"{jax.device_count()} devices.")


def _validate(config: ml_collections.ConfigDict) -> None:
  check_steps_and_batch(config)
  size, stride = int(config.data.image_size), encoder_lib.encoder_stride(config.encoder)
  encoder_lib.check_image_size(size, size, stride)
  if int(config.encoder.channels) not in (1, 3):
    raise ValueError(f"config.encoder.channels must be 1 or 3, got {config.encoder.channels}.")


def _patch_table_array(config, workdir, mesh) -> jax.Array:
  if uses_patch_loss(config):
    table = data_lib.segmentation_table(config, cache_dir=workdir)
  else:
    table = np.zeros((1, 1), np.int32)
  return jax.device_put(table, NamedSharding(mesh, P()))


def _check_vertex_ids(vertex_ids: np.ndarray, num_vertices: int, config) -> None:
  """The data's vertex ids must index the segmentation table's vertices."""
  if uses_patch_loss(config) and vertex_ids.size and int(vertex_ids.max()) >= num_vertices:
    raise ValueError(
        f"The data has vertex id {int(vertex_ids.max())} but the segmentation table of face "
        f"model {config.data.face_model!r} has {num_vertices} vertices: the pipeline renders a "
        "different model than the one segmented. Check config.data.face_model.")


def _evaluate(evaluate, state, eval_batches, mesh, patch_table) -> Dict[str, float]:
  totals: Dict[str, float] = {}
  for local in eval_batches:
    sums = jax.device_get(evaluate(state, sharding_lib.to_global_batch(local, mesh), patch_table))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  return summarize_eval(totals)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> TrainState:
  """Trains the DFF encoder per ``config``, resuming from ``workdir`` if it has checkpoints.

  Writes ``workdir/config.json``, ``workdir/checkpoints/<step>``, ``workdir/metrics.jsonl``
  (records of ``kind`` "train" every ``log_every`` steps and "eval" every ``eval_every`` steps)
  and the cached segmentation table.

  Args:
    config: experiment config (see ``experiments/configs/dff_tiny.py`` for the fields).
    workdir: output / resume directory.

  Returns:
    The final :class:`TrainState` (sharded ``jax.Array`` s).

  Raises:
    NonFiniteLossError: a non-finite loss or gradient at some step (named in the message); the
      checkpoints written before it are kept.
  """
  workdir = Path(workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  _validate(config)
  is_main = jax.process_index() == 0
  if is_main:
    checkpoint_lib.save_config_json(workdir, config)

  mesh = sharding_lib.create_mesh(config)
  abstract = jax.eval_shape(lambda: init_train_state(config))
  shardings = sharding_lib.state_shardings(config, mesh, abstract)
  checkpointer = checkpoint_lib.Checkpointer(
      workdir, max_to_keep=int(config.max_checkpoints_to_keep),
      save_interval_steps=int(config.checkpoint_every))
  state = restore_or_init(checkpointer, abstract, shardings, jax.jit(
      lambda: init_train_state(config), out_shardings=shardings,
      compiler_options=sharding_lib.compiler_options(config)))
  start_step = int(jax.device_get(state.step))
  num_steps = int(config.num_steps)
  if start_step >= num_steps:
    logging.info("Nothing to do: the checkpoint is at step %d >= num_steps %d", start_step,
                 num_steps)
    checkpointer.close()
    return state

  patch_table = _patch_table_array(config, workdir, mesh)
  train, evaluate = make_jitted_steps(config, mesh, shardings)
  eval_batches = data_lib.load_eval_batches(config) if int(config.eval_every) > 0 else []
  writer = progress_lib.MetricsWriter(workdir / "metrics.jsonl", enabled=is_main)
  bar = progress_lib.ProgressBar(num_steps, start_step,
                                 enabled=is_main and bool(config.progress_bar))

  def checked_batches():
    for index, local in enumerate(data_lib.make_train_iterator(config, start_step)):
      if index == 0:
        _check_vertex_ids(local["vertex_ids"], patch_table.shape[1], config)
      yield local

  def step_fn(state_, local):
    return train(state_, sharding_lib.to_global_batch(local, mesh), patch_table)

  def after_step(done, state_):
    if not eval_batches or (done % int(config.eval_every) and done != num_steps):
      return False
    summary = _evaluate(evaluate, state_, eval_batches, mesh, patch_table)
    writer.write(done, summary, kind="eval")
    bar.write(f"eval step {done}: " + ", ".join(f"{k}={v:.4g}" for k, v in summary.items()))
    return True

  return loop_lib.run_training_loop(
      step_fn, state, checked_batches(), start_step=start_step, num_steps=num_steps,
      checkpointer=checkpointer, writer=writer, bar=bar, log_every=int(config.log_every),
      items_per_step=2 * int(config.global_batch_size),  # Two views per pair.
      after_step=after_step)


def params_digest(params: PyTree) -> str:
  """A short hex digest of every parameter's bytes (equal digests = bit-identical params)."""
  import hashlib  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256()
  flat, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(params))
  for path, leaf in flat:
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return digest.hexdigest()[:16]


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), sort_keys=True, default=str)
