"""End-to-end fine-tuning of the point-head encoder and its cascade on real + synthetic faces.

Command (after ``experiments/configs/align_point.py``; needs the real-face fit cache)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_point.py \\
      --workdir=/work/runs/finetune_point

As ``finetune_real`` (same faces, seeds, mix and steps), starting from the ``align_point``
cascade and the ``dff_point`` encoder.
"""

from experiments.configs import finetune_real


def get_config():
  config = finetune_real.get_config()
  config.cascade = "/work/runs/align_point/cascade_dff.npz"
  config.checkpoint = "/work/runs/dff_point/bundle"
  return config
