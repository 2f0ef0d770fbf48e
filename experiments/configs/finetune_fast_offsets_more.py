"""``finetune_fast_offsets`` continued: 2,000 more steps of the fast (96 px) pair in the
annotators' landmark convention.

Command (starts from the shipped fast pair, which is ``finetune_fast_offsets``'s result; its
cascade file carries the landmark offsets, which this run keeps)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_fast_offsets_more.py \\
      --workdir=/work/runs/finetune_fast_offsets_more

Why: the default pair's second run in the annotators' convention gained on every set again;
this measures the same for the fast pair. Same losses, learning rates and mix; fresh faces
(pipeline seed 220000, used nowhere else).
"""

from experiments.configs import finetune_fast_offsets


def get_config():
  config = finetune_fast_offsets.get_config()
  config.seed = 220_000
  config.num_steps = 2_000
  config.landmark_offsets = ""
  return config
