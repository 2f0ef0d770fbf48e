"""Smoke test of end-to-end fine-tuning: a tiny encoder, 2 stages, 32 px crops, seconds on a CPU.

Command (from the repository root; the tiny encoder bundle comes from
``python -m experiments.train_dff --config=experiments/configs/dff_tiny.py --workdir=/tmp/dff_tiny
--export_dir=/tmp/dff_tiny/bundle``)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_tiny.py \
      --workdir=/tmp/finetune_tiny --config.checkpoint=/tmp/dff_tiny/bundle

Starts from zero regressors (``cascade = ""``; initial pose and pose scales from 64 training
faces), 4 steps of 2 faces (48 px renders, 32 px crops), constant learning rates after one warm-up
step, evaluation on 8 held-out faces. Expected: done in well under a minute; ``summary.json`` with
``before`` / ``after`` bbox NME (large, ~0.2-0.5: a tiny untrained model), checkpoints at steps 2
and 4, ``bundle/`` and ``cascade_dff.npz`` in the workdir. Re-running resumes at step 4 and only
re-exports / re-evaluates.
"""

import ml_collections

from experiments.configs import finetune_cpu


def get_config() -> ml_collections.ConfigDict:
  config = finetune_cpu.get_config()
  config.checkpoint = ""           # set to the tiny bundle (see the docstring)
  config.cascade = ""
  config.cascade_config.num_stages = 2
  config.cascade_config.crop_size = 32
  config.data = ml_collections.ConfigDict(dict(image_size=48, num_views=2,
                                               num_correspondences=16, shadows=False,
                                               render_max_triangles=0,
                                               face_size_range=(0.3, 0.4)))
  config.num_eval_faces = 8
  config.eval_batch_size = 4
  config.num_train_faces = 64
  config.num_steps = 4
  config.global_batch_size = 2
  config.learning_rate = 3e-3
  config.cascade_learning_rate = 1e-3
  config.warmup_steps = 1
  config.end_learning_rate_fraction = 1.0  # constant after warm-up
  config.checkpoint_every = 2
  config.log_every = 1
  config.progress_bar = False
  config.xla_fast_compile = True
  return config
