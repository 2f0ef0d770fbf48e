"""End-to-end fine-tuning of the shipped point-head pair on a mix with more real faces.

Command (needs the real-face fit cache, ``python -m experiments.fit_real_faces
--data_dir=../shared/datasets/faces68 --split=train --out=/work/runs/real_fits_train.npz``)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_point_real90.py \\
      --workdir=/work/runs/finetune_point_real90

Why: every fine-tune from the shipped pair since ``finetune_point_3d`` improved the held-out
renders and lost on both photo sets (WORKSPACE section 14), as if the 40 % synthetic faces of the
mix pulled the pair towards the renders' conventions. This run starts from the shipped files
(``cascade_dff.npz`` and the ``dff_point_aligned`` encoder it names) with the losses and learning
rates of ``finetune_point_3d`` but 90 % real faces (``real.fraction``; of those, 60 % the annotated
photo and 40 % the fitted face re-rendered at a random pose, as before), 1,000 steps, fresh faces
(pipeline seed 160000, used nowhere else).
"""

from experiments.configs import finetune_point_3d


def get_config():
  config = finetune_point_3d.get_config()
  config.cascade = "dff_jax/assets/cascade_dff.npz"
  config.checkpoint = "dff_jax/assets/dff_point_aligned"
  config.seed = 160_000
  config.num_steps = 1000
  config.real.fraction = 0.9
  return config
