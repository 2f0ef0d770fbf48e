"""The fast pair fine-tuned with a 40-direction shape fit in every stage (issue 12: the loop).

Command (needs the real-face fit cache, ``python -m experiments.fit_real_faces
--data_dir=../shared/datasets/faces68 --split=train --out=/work/runs/real_fits_train.npz``;
resumable: run it again with the same workdir to continue)::

  python -m experiments.finetune_end_to_end \\
      --config=experiments/configs/finetune_fit_modes.py \\
      --workdir=/work/runs/finetune_fit_modes

Why: each stage's shape fit solved for all 113 identity and expression coefficients, a 113 x 113
system per face per stage, and the normal equations and their Cholesky solve took over half of the
loop (``benchmark --what=loop_profile --field=point --crop_size=96``). Restricted to the 40
directions of the coefficient space that move the landmark vertices most under the shape prior
(``cascade.with_fit_modes``), the system is 40 x 40. The pair shipped before it, read with 40
directions and no training, lost 0.7 % on AFLW2000-3D dev (``eval_alignment --fit_modes=40``,
WORKSPACE.md section 15, "A shape fit in 40 directions"), so the pair is fine-tuned with the
restricted fit in the loop: the schedule of ``finetune_student_l1_more`` (encoder 1e-4, regressors
7.5e-6, 100 warm-up steps, cosine to 10 %) from the shipped fast pair, fresh faces (pipeline seed
280000, used nowhere else), landmark offsets and output calibration kept. Afterwards refine_outputs
and fit_agreement, as for the students. It ran on the shipped files of 3cf494f (the recipe's
``fit_modes`` step names the inputs it started from) and has shipped as the fast pair since, so the
defaults (``finetune_student_l1_more``'s) now name its own result.
"""

from experiments.configs import finetune_student_l1_more


def get_config():
  config = finetune_student_l1_more.get_config()
  config.fit_modes = 40
  config.seed = 280_000
  return config
