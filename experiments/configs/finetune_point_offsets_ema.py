"""``finetune_point_offsets_select`` with an exponential moving average of the parameters
(``config.ema_decay = 0.998``, about 500 steps): the same run (seed 210000, 2,000 steps from the
default shipped at 04bf4ef, the ``ship_more`` step of the manifest's ``cascade_dff`` recipe),
whose kept checkpoints now also carry the average, which the run exports.

Command (the starting pair given as overrides, as in the manifest)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_point_offsets_ema.py \\
      --workdir=/work/runs/ema_traj --config.cascade=SHIP_MORE/cascade_dff.npz \\
      --config.checkpoint=SHIP_MORE/dff_point_aligned

Why: the kept checkpoints of ``finetune_point_offsets_select`` swing on both photo sets (faces68
val 0.0436-0.0465 within 250 steps, WORKSPACE section 14) while the learning rate decays; the
moving average does not change the trained parameters' path, so its checkpoints compare with that
run's step for step.
"""

from experiments.configs import finetune_point_offsets_select


def get_config():
  config = finetune_point_offsets_select.get_config()
  config.ema_decay = 0.998
  return config
