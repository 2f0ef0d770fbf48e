"""The third student of the fast (96 px) pair: one 3x3 convolution at the three finest levels.

Command (needs the real-face fit cache, ``python -m experiments.fit_real_faces
--data_dir=../shared/datasets/faces68 --split=train --out=/work/runs/real_fits_train.npz``;
resumable: run it again with the same workdir to continue)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_student_l2.py \\
      --workdir=/work/runs/finetune_student_l2

Why: once each stage's shape fit solved for 40 directions (``finetune_fit_modes``), the encoder was
most of the stream's jitted call. Timed ad hoc with random weights (batch 8, 96 px, one process, in
turns; no results file), dropping the second convolution of level 2 (64 -> 64 at 24 x 24) took about
a fifth off the encoder's forward pass on the Intel Xeon, dropping level 3's about a seventh. This
config repeats ``finetune_student_l1``'s recipe one level further: the student ``convs_per_level =
(1, 1, 1, 2)`` starts from the shipped fast pair (parameters copied wherever path and shape agree:
all but level 2's second convolution and norm; its shape fit's 40 directions kept) and is distilled
from its frozen encoder while fine-tuned end to end; fresh faces (pipeline seed 290000, used nowhere
else); 3,000 steps instead of 4,000, to finish within the session it started in. Afterwards: fit the
output refinement and the descriptor template again.

Not shipped (WORKSPACE.md section 15, "A third student, not shipped"): after this run AFLW2000-3D
dev was 8 % over issue 12's accuracy limit and the renders' worst yaw bin over 0.03, for a
two-process stream only a little faster. A longer run (a warm restart as
``finetune_student_l1_more`` was) is the next thing to try with it.
"""

from experiments.configs import finetune_student_l1


def get_config():
  config = finetune_student_l1.get_config()
  config.student.convs_per_level = (1, 1, 1, 2)
  config.seed = 290_000
  config.num_steps = 3000
  return config
