"""Experiment configs as code: each module's ``get_config()`` returns an ``ml_collections``
ConfigDict, and its docstring gives the exact command and the expected result.

:func:`base_config` holds every field ``dff_jax.train.train_and_evaluate`` reads, with defaults;
the config files start from it and change what they need.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """All training fields with defaults (the ``cpu`` preset at 128 x 128 grey).

  Fields:
    seed: PRNG seed of parameter init and of the per-step keys (``fold_in(rng, step)``).
    num_steps, global_batch_size: optimizer steps; image *pairs* per step over all processes
      (each pair gives 2 images).
    learning_rate, warmup_steps, end_learning_rate_fraction: linear warmup then cosine decay.
    weight_decay, adam_b1, adam_b2, grad_clip_norm: AdamW and global-norm clipping.
    encoder: ``dff_jax.encoder.encoder_from_config`` fields plus ``channels`` (1 = grey as in the
      paper, 3 = RGB).
    loss: ``dff_jax.losses.default_loss_config`` fields (``patch_weight``, ``info_nce_weight``,
      ``temperature``, ``logit_scale``, ``num_pixels_per_image``,
      ``num_segmentations_per_step``) plus ``num_segmentations`` (S), ``num_patches`` (P) and
      ``segmentation_seed`` of the segmentation table.
    data: ``data_pipeline.config.PipelineConfig`` fields (training pairs use ``data.seed``).
    num_workers: grain worker processes rendering pairs (0 = in the training process).
    eval: held-out pairs ``seed`` (must differ from ``data.seed``), ``num_pairs``,
      ``batch_size``, ``pck_thresholds_px``; evaluated every ``eval_every`` steps (0 = never).
    log_every, checkpoint_every, max_checkpoints_to_keep: metrics.jsonl and Orbax cadence.
    sharding: ``params`` "replicated" or "fsdp"; ``fsdp`` devices per fsdp group (0 = all).
    progress_bar: show the tqdm bar (process 0).
    xla_fast_compile: compile without LLVM optimisation (seconds instead of ~10 s per jit on
      CPU; for tests and smoke runs, slower steps).
    debug_nan_step: test hook, poisons the loss with NaN at this step (-1 = off).
  """
  from data_pipeline.config import PipelineConfig  # pylint: disable=g-import-not-at-top
  from dff_jax.losses import default_loss_config  # pylint: disable=g-import-not-at-top

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_steps = 1000
  config.global_batch_size = 8
  config.learning_rate = 1e-3
  config.warmup_steps = 100
  config.end_learning_rate_fraction = 0.01
  config.weight_decay = 1e-4
  config.adam_b1 = 0.9
  config.adam_b2 = 0.999
  config.grad_clip_norm = 1.0

  config.encoder = ml_collections.ConfigDict(dict(
      features=(32, 64, 96, 128), descriptor_dim=64, convs_per_level=2, norm="group",
      num_groups=8, activation="relu", upsample="bilinear", downsample="max_pool",
      dtype="float32", channels=1))

  config.loss = default_loss_config()
  config.loss.num_segmentations = 100
  config.loss.num_patches = 500
  config.loss.segmentation_seed = 0

  config.data = ml_collections.ConfigDict(PipelineConfig().to_dict())
  config.data.image_size = 128
  config.num_workers = 1

  config.eval = ml_collections.ConfigDict(dict(
      seed=1_000_003, num_pairs=32, batch_size=8, pck_thresholds_px=(4.0,)))
  config.eval_every = 500
  config.log_every = 20
  config.checkpoint_every = 500
  config.max_checkpoints_to_keep = 3

  config.sharding = ml_collections.ConfigDict(dict(params="replicated", fsdp=1))
  config.progress_bar = True
  config.xla_fast_compile = False
  config.debug_nan_step = -1
  return config
