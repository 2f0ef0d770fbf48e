"""End-to-end fine-tuning of the 96 px pair (issue 12), after ``align_fast.py``.

Command (needs the real-face fit cache)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_fast.py \\
      --workdir=/work/runs/finetune_fast

Starts from the ``align_fast`` cascade (96 px crops; the cascade file carries its crop size)
and the shipped encoder, with ``finetune_point``'s learning rates and mix, the pose term of
``finetune_point_pose`` (weight 0.1) and fresh faces (pipeline seed 110000, used nowhere else);
2,000 steps.
"""

from experiments.configs import finetune_point


def get_config():
  config = finetune_point.get_config()
  config.cascade = "/work/runs/align_fast/cascade_dff.npz"
  config.checkpoint = "dff_jax/assets/dff_point_aligned"
  config.seed = 110_000
  config.num_steps = 2000
  config.checkpoint_every = 200
  config.pose_loss_weight = 0.1
  return config
