"""End-to-end fine-tuning of the shipped point-head pair through test-time mirroring.

Command (needs the real-face fit cache, ``python -m experiments.fit_real_faces
--data_dir=../shared/datasets/faces68 --split=train --out=/work/runs/real_fits_train.npz``)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_point_mirror.py \\
      --workdir=/work/runs/finetune_point_mirror

Why: with ``mirror=True`` every cascade stage averages its steps on the crop and on the mirrored
crop (``dff_jax.alignment.cascade.apply_stage``), which the shipped regressors were never trained
for: averaging two independent errors halves their variance, but a stage trained for the
average may take steps that suit it better. This run starts from the shipped files
(``cascade_dff.npz`` and the ``dff_point_aligned`` encoder it names) and trains the same losses
as ``finetune_point_3d`` (landmarks, pose term, 3D-convention term) with ``mirror = True``, at
that run's learning rates, with fresh faces (pipeline seed 150000, used nowhere else); about
twice the time per step, since every crop is described twice.
"""

from experiments.configs import finetune_point_3d


def get_config():
  config = finetune_point_3d.get_config()
  config.cascade = "dff_jax/assets/cascade_dff.npz"
  config.checkpoint = "dff_jax/assets/dff_point_aligned"
  config.seed = 150_000
  config.num_steps = 1000
  config.mirror = True
  return config
