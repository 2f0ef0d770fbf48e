"""The alignment cascade at a 96 px crop on the shipped encoder (issue 12: a cheaper call).

Command (needs the real-face fit cache)::

  python -m experiments.train_alignment --config=experiments/configs/align_fast.py \\
      --workdir=/work/runs/align_fast

Why: the encoder is most of the jitted call's time and its cost grows with the crop's area; at
96 px it needs 0.56 of the FLOPs at 128 px (and the host's working crop is 192 px instead of
256). Everything else is ``align_point``'s (faces, seeds, ridge settings), with the shipped
point-head encoder (``dff_point_aligned``, the default pair's) describing the crops; its
fine-tuning at this size is ``finetune_fast.py``.
"""

from experiments.configs import align_point


def get_config():
  config = align_point.get_config()
  config.checkpoint = "dff_jax/assets/dff_point_aligned"
  config.cascade.crop_size = 96
  return config
