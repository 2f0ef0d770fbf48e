"""The next student of the fast (96 px) pair: one 3x3 convolution at the two finest levels.

Command (needs the real-face fit cache, ``python -m experiments.fit_real_faces
--data_dir=../shared/datasets/faces68 --split=train --out=/work/runs/real_fits_train.npz``;
resumable: run it again with the same workdir to continue)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_student_l1.py \\
      --workdir=/work/runs/finetune_student_l1

Why: the fast pair shipped then was already a student with one convolution at the finest level
(``finetune_student_l0``, WORKSPACE.md section 15). Timed ad hoc with random weights (batch 8,
96 px, in turns; no results file), dropping the second convolution of level 1 (32 -> 32 at 48 x 48)
shortened that encoder's forward pass by about a quarter, more than dropping one at level 2 or 3.
This config repeats ``finetune_student_l0``'s recipe one level further: the student
``convs_per_level = (1, 1, 2, 2)`` starts from the shipped fast pair (parameters copied wherever
path and shape agree: all but level 1's second convolution and norm) and is distilled from its
frozen encoder while fine-tuned end to end; fresh faces (pipeline seed 260000, used nowhere else).
Afterwards: fit the output refinement and the descriptor template again (the ``student_l1_refine``
and ``student_l1_agreement`` steps of the ``cascade_dff_fast`` recipe).

Since the afternoon of 2026-12-06 the shipped fast pair is this student (WORKSPACE.md section 15,
"One convolution at the two finest levels"; since the evening, fine-tuned longer by
``finetune_student_l1_more``), so the defaults above now name the student itself; the recipe's
``student_l1`` step gives the inputs this run started from (``--config.cascade`` and
``--config.checkpoint``: the level-0 student, shipped at commit f811fec).
"""

from experiments.configs import finetune_student_l0


def get_config():
  config = finetune_student_l0.get_config()
  config.student.convs_per_level = (1, 1, 2, 2)
  config.seed = 260_000
  return config
