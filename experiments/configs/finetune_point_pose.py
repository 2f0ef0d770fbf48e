"""A third end-to-end fine-tuning of the shipped point-head pair, now with a pose term.

Command (needs the real-face fit cache, ``python -m experiments.fit_real_faces
--data_dir=../shared/datasets/faces68 --split=train --out=/work/runs/real_fits_train.npz``)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_point_pose.py \\
      --workdir=/work/runs/finetune_point_pose

Why: beyond 60 degrees of yaw the shipped pair turns faces less than they are (by 6.8 degrees on
AFLW2000-3D dev, 4.4 on held-out renders: ``yaw_error_deg`` in
``experiments/results/eval_{aflw,syn}_jaw3d_summary.json``), and the landmark loss alone does
not see it (the visible outline barely moves with the last degrees of yaw, while the hidden jaw
of the 3D convention does). This run starts from the shipped files (``cascade_dff.npz`` and the
``dff_point_aligned`` encoder it names) and adds ``pose_loss_weight`` times the mean absolute
error of (pitch, yaw, roll) against each view's pose (exact for renders, the fit's for a photo;
:func:`dff_jax.training.finetune.pose_loss`). 1,500 steps at the learning rates of
``finetune_point_more`` with fresh faces (pipeline seed 100000, used nowhere else); the same
real + synthetic mix.
"""

from experiments.configs import finetune_point_more


def get_config():
  config = finetune_point_more.get_config()
  config.cascade = "dff_jax/assets/cascade_dff.npz"
  config.checkpoint = "dff_jax/assets/dff_point_aligned"
  config.seed = 100_000
  config.num_steps = 1500
  config.pose_loss_weight = 0.1
  return config
