"""``finetune_point_offsets_more2`` from the float32 files its start was shipped from.

Command (the starting pair is ``finetune_point_offsets_more``'s workdir, whose float32 cascade
and encoder the ship step turned into the shipped default)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_point_offsets_more2_f32.py \\
      --workdir=/work/runs/finetune_point_offsets_more2_f32 \\
      --config.cascade=/work/runs/finetune_point_offsets_more/cascade_dff.npz \\
      --config.checkpoint=/work/runs/finetune_point_offsets_more/bundle

Why: ``finetune_point_offsets_more2`` (from the shipped files: float16 regressors, offsets
rounded in the meta) and the fast pair's second run lost on the photos, while the one
continuation that gained started from a float32 workdir. Same seed (210000), steps, losses,
learning rates and mix as ``finetune_point_offsets_more2``: only the starting files differ.
"""

from experiments.configs import finetune_point_offsets_more2


def get_config():
  config = finetune_point_offsets_more2.get_config()
  config.cascade = ""
  config.checkpoint = ""
  return config
