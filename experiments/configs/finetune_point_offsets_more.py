"""``finetune_point_offsets`` continued: 1,500 more steps in the annotators' landmark convention.

Command (the starting pair is ``finetune_point_offsets``'s workdir; its cascade file carries the
landmark offsets, which this run keeps: ``config.landmark_offsets = ""``)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_point_offsets_more.py \\
      --workdir=/work/runs/finetune_point_offsets_more \\
      --config.cascade=/work/runs/finetune_point_offsets/cascade_dff.npz \\
      --config.checkpoint=/work/runs/finetune_point_offsets/bundle

Why: every earlier continuation of the shipped pair lost on the photos; the first run in the
annotators' convention gained on both photo sets, so this measures whether the mix, now
consistent, keeps paying with more steps. Same losses, learning rates and mix; fresh faces
(pipeline seed 180000, used nowhere else).
"""

from experiments.configs import finetune_point_offsets


def get_config():
  config = finetune_point_offsets.get_config()
  config.cascade = ""
  config.checkpoint = ""
  config.seed = 180_000
  config.landmark_offsets = ""
  return config
