"""The fast (96 px) pair fine-tuned in the annotators' landmark convention, as the default pair
was (``finetune_point_offsets``).

Command (needs the real-face fit cache, ``python -m experiments.fit_real_faces
--data_dir=../shared/datasets/faces68 --split=train --out=/work/runs/real_fits_train.npz``)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_fast_offsets.py \\
      --workdir=/work/runs/finetune_fast_offsets

Starts from the shipped fast pair (``cascade_dff_fast.npz`` and the ``dff_point_fast`` encoder
it names), estimates the landmark offsets from the fit cache and moves the renders' labels into
that convention; the losses (pose and 3D-convention terms), learning rates and mix of
``finetune_point_offsets``; 1,500 steps, fresh faces (pipeline seed 200000, used nowhere else).
Since the session of 2026-12-06 the shipped fast pair is a student made after this step
(``finetune_student_l0``, then ``finetune_student_l1`` and ``finetune_student_l1_more``); the
``cascade_dff_fast`` recipe's overrides name this step's inputs.
"""

from experiments.configs import finetune_point_offsets


def get_config():
  config = finetune_point_offsets.get_config()
  config.cascade = "dff_jax/assets/cascade_dff_fast.npz"
  config.checkpoint = "dff_jax/assets/dff_point_fast"
  config.seed = 200_000
  config.landmark_offsets_rounds = 10   # as this run was made (finetune_point_offsets: 5)
  return config
