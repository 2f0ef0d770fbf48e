"""Smoke test: a tiny DFF encoder on 32 x 32 grey pairs, a few steps, seconds on a CPU.

Command (from the repository root):

  python -m experiments.train_dff --config=experiments/configs/dff_tiny.py --workdir=/tmp/dff_tiny

Expected result: done in ~20 s on a 2-core CPU (mostly start-up and JIT compilation, which
``xla_fast_compile`` keeps to a few seconds), checkpoints at steps 2 and 4 in
``/tmp/dff_tiny/checkpoints``, four "train" records in ``/tmp/dff_tiny/metrics.jsonl`` with finite
losses around 6-7 (16 patches per segmentation, logit scale 10, untrained) and one "eval" record
with ``loss`` and ``pck@4px`` (chance level, ~0.1-0.2). Running the same command again resumes at step 4 and does nothing. Overrides work
as usual, e.g. ``--config.num_steps=10 --config.loss.info_nce_weight=1``.
"""

from experiments.configs import base_config


def get_config():
  config = base_config()
  config.num_steps = 4
  config.global_batch_size = 2
  config.learning_rate = 3e-3
  config.warmup_steps = 1

  config.encoder.features = (8, 16)
  config.encoder.descriptor_dim = 8
  config.encoder.convs_per_level = 1
  config.encoder.num_groups = 4

  config.loss.num_segmentations = 4
  config.loss.num_patches = 16
  config.loss.num_segmentations_per_step = 2
  config.loss.num_pixels_per_image = 128
  config.loss.logit_scale = 10.0

  config.data.image_size = 32
  config.data.num_correspondences = 16
  config.data.num_examples = 1000
  config.data.shadows = False
  config.data.render_max_triangles = 0  # No decimation: its one-off cost dominates a few samples.
  config.num_workers = 0

  config.eval.num_pairs = 2
  config.eval.batch_size = 2
  config.eval_every = 4
  config.log_every = 1
  config.checkpoint_every = 2
  config.progress_bar = False
  config.xla_fast_compile = True
  return config
