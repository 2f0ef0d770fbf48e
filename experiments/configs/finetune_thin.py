"""A thinner encoder for the 96 px pair (issue 12): one 3x3 convolution at the two finest pyramid
levels instead of two, distilled from the fast pair's encoder while the pair is fine-tuned end
to end.

Command (needs the real-face fit cache, ``python -m experiments.fit_real_faces
--data_dir=../shared/datasets/faces68 --split=train --out=/work/runs/real_fits_train.npz``)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_thin.py \\
      --workdir=/work/runs/finetune_thin_1122

Why: at 96 px the encoder is most of the jitted call, and XLA:CPU spends its time on the second
convolution of the fine levels far out of proportion to their FLOPs. The student
(``convs_per_level = (1, 1, 2, 2)``, the fast encoder's widths and point head) starts from the
fast encoder's parameters where they fit (all of levels 2-3 and the head, the first convolution
and norm of levels 0-1) and the shipped fast cascade (``cascade_dff_fast.npz``); the loss is the fine-tuning's (landmarks,
the pose term at 0.1) plus ``distill_weight`` times the relative squared error between its
feature pyramid and the frozen fast encoder's on the same crops
(:func:`dff_jax.training.distill.distill_loss`), so the cascade's regressors keep reading the
features they were fitted on. 2,000 steps of ``finetune_fast``'s mix with fresh faces (pipeline
seed 120000, used nowhere else); the encoder's learning rate is 5x ``finetune_fast``'s (layers
it must re-learn).

Tried first: ``--config.student.convs_per_level="(1, 1, 1, 2)"`` (workdir
``/work/runs/finetune_thin``): 0.56x the jitted call's time but held-out synthetic NME 0.039
against the fast pair's 0.024 after 2,000 steps
(``experiments/results/finetune_thin_1112_summary.json``).
"""

import ml_collections

from experiments.configs import finetune_fast


def get_config():
  config = finetune_fast.get_config()
  config.cascade = "dff_jax/assets/cascade_dff_fast.npz"
  config.checkpoint = "dff_jax/assets/dff_point_fast"
  config.student = ml_collections.ConfigDict(dict(convs_per_level=(1, 1, 2, 2)))
  config.distill_weight = 0.3
  config.seed = 120_000
  config.num_steps = 2000
  config.learning_rate = 5e-4
  config.warmup_steps = 100
  return config
