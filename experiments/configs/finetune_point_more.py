"""A second end-to-end fine-tuning of the point-head pair, warm-restarted from
``finetune_point_long``'s result: 3,000 more steps on the same real + synthetic mix.

Command (after ``experiments/configs/finetune_point_long.py``)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_point_more.py \\
      --workdir=/work/runs/finetune_point_more

Why: ``finetune_point_long``'s training loss was still falling over its last 500 steps (0.0294
-> 0.0284 mean per 500 steps, ``metrics.jsonl``) as its cosine schedule ran out. This run starts
from its encoder and cascade with a new schedule at half the peak learning rates (encoder 5e-5,
regressors 1.5e-5, 100 warm-up steps, cosine to 10 %) and fresh faces (pipeline seed 90000, used
nowhere else); everything else as ``finetune_point_long``.
"""

from experiments.configs import finetune_point_long


def get_config():
  config = finetune_point_long.get_config()
  config.cascade = "/work/runs/finetune_point_long/cascade_dff.npz"
  config.checkpoint = "/work/runs/finetune_point_long/bundle"
  config.seed = 90_000
  config.num_steps = 3000
  config.learning_rate = 5e-5
  config.cascade_learning_rate = 1.5e-5
  config.warmup_steps = 100
  return config
