"""A student encoder for the 96 px pair with one 3x3 convolution at the finest level (issue 12).

Command (needs the real-face fit cache, ``python -m experiments.fit_real_faces
--data_dir=../shared/datasets/faces68 --split=train --out=/work/runs/real_fits_train.npz``;
resumable: run it again with the same workdir to continue)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_student_l0.py \\
      --workdir=/work/runs/finetune_student_l0

Why: with Winograd's convolution for the 32- and 64-channel layers (``dff_jax.convolution``), the
finest level is the encoder's least efficient part: on one core (as each ``align --processes=2``
worker runs) its 16 -> 16 convolution at 96 x 96 runs at about 0.7 of the core's matmul peak and
level 0 takes about 29 % of the encoder's time for 19 % of its FLOPs (ad hoc timings of the
session of 2026-12-06 morning, no results file; WORKSPACE.md section 15 says so without the
figures), and neither Winograd nor any other layout beat XLA there. Removing that convolution
(``convs_per_level = (1, 2, 2, 2)``) needs a retraining.

The student starts from the shipped fast pair (``cascade_dff_fast.npz`` and its ``dff_point_fast``
encoder, parameters copied wherever path and shape agree: all but level 0's second convolution
and norm), keeps the pair's landmark offsets and output calibration (``landmark_offsets = ""``),
and is fine-tuned end to end as ``finetune_fast_offsets`` was (the pose and 3D-convention terms,
the real + synthetic mix) plus ``distill_weight`` times the relative squared distance of its
feature pyramid to the frozen fast encoder's (:func:`dff_jax.training.distill.distill_loss`), so
the cascade keeps reading the features it was fitted on. ``finetune_thin``'s encoder learning
rate (5e-4) and distillation weight (0.3), twice its steps (the thin students of that config had
not matched their teacher after 2,000); fresh faces (pipeline seed 250000, used nowhere else).
The output refinement and the descriptor template are kept as they are, not trained: fit them
again afterwards (the ``student_refine`` and ``student_agreement`` steps of the
``cascade_dff_fast`` recipe).

The shipped fast pair was this student from the session of 2026-12-06 (WORKSPACE.md section 15,
"One convolution at the finest level") until its own student replaced it that afternoon
(``finetune_student_l1``), so the defaults above now name another encoder; the recipe's
``student`` step gives the inputs this run started from (``--config.cascade`` and
``--config.checkpoint``: the pair before it, shipped at commit da3d1e8).
"""

import ml_collections

from experiments.configs import finetune_fast_offsets


def get_config():
  config = finetune_fast_offsets.get_config()
  config.landmark_offsets = ""  # the shipped pair's
  config.student = ml_collections.ConfigDict(dict(convs_per_level=(1, 2, 2, 2)))
  config.distill_weight = 0.3
  config.seed = 250_000
  config.num_steps = 4000
  config.checkpoint_every = 200
  config.learning_rate = 5e-4
  config.warmup_steps = 100
  return config
