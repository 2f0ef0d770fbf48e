"""``finetune_point_offsets_more`` continued once more: 2,000 steps in the annotators' convention.

Command (starts from the shipped default, which is ``finetune_point_offsets_more``'s result; its
cascade file carries the landmark offsets, which this run keeps)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_point_offsets_more2.py \\
      --workdir=/work/runs/finetune_point_offsets_more2

Why: both earlier 1,500-step runs in the annotators' convention gained on both photo sets and
on the renders; this measures whether a third, longer one still pays. Same losses, learning
rates and mix; fresh faces (pipeline seed 210000, used nowhere else).
"""

from experiments.configs import finetune_point_offsets


def get_config():
  config = finetune_point_offsets.get_config()  # from the shipped default's files
  config.seed = 210_000
  config.num_steps = 2_000
  config.landmark_offsets = ""
  return config
