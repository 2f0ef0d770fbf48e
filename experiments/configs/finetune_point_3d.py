"""A fourth end-to-end fine-tuning of the shipped point-head pair, adding a term on the points of
the 3D convention (the ones AFLW2000-3D scores).

Command (needs the real-face fit cache, ``python -m experiments.fit_real_faces
--data_dir=../shared/datasets/faces68 --split=train --out=/work/runs/real_fits_train.npz``)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_point_3d.py \\
      --workdir=/work/runs/finetune_point_3d

Why: the shipped pair's AFLW2000-3D error is scored on ``landmarks_3d_px``, the fitted shape's
jaw-line vertices under the fitted pose, which the fine-tuning loss never read (the landmark
term reads the visible outline, the pose term only the three angles): the 3D jaw's error was
still the largest region at every yaw (``nme_by_region`` of
``experiments/results/eval_aflw_pose_summary.json``). This run starts from the pose-term pair
(the files shipped at commit bab921c, ``cascade_dff.npz`` and the ``dff_point_aligned`` encoder
it names; the manifest's ``finetune_3d`` step passes them explicitly, since this run's own result
is the shipped default now) and adds
``landmarks_3d_loss_weight`` times the landmark error of ``landmarks_3d_px`` against
:func:`dff_jax.training.finetune.landmarks_3d_targets` (the annotated inner points, and the jaw
line of each view's true shape and pose: exact for renders, the fit's for a photo). 1,500 steps
at the learning rates of ``finetune_point_more``, the pose term as ``finetune_point_pose``, fresh
faces (pipeline seed 130000, used nowhere else); the same real + synthetic mix.
"""

from experiments.configs import finetune_point_pose


def get_config():
  config = finetune_point_pose.get_config()
  config.seed = 130_000
  config.landmarks_3d_loss_weight = 0.5
  return config
