"""Longer end-to-end fine-tuning of the point-head pair: ``finetune_point`` run for 4,000 steps.

Command (after ``experiments/configs/align_point.py``; needs the real-face fit cache)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_point_long.py \\
      --workdir=/work/runs/finetune_point_long

Same start (the ``align_point`` cascade, the ``dff_point`` encoder), faces, seeds and mix as
``finetune_point``; 4,000 steps instead of 800 (its held-out synthetic NME was still falling at
step 800: 0.0362 -> 0.0310), the learning-rate schedule stretched to match.
"""

from experiments.configs import finetune_point


def get_config():
  config = finetune_point.get_config()
  config.num_steps = 4000
  config.checkpoint_every = 200
  return config
