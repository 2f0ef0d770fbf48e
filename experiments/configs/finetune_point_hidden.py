"""End-to-end fine-tuning of the point-head pair with a residual hidden layer in every stage.

Command (after ``experiments/configs/finetune_point_3d.py``; needs the real-face fit cache,
``python -m experiments.fit_real_faces --data_dir=../shared/datasets/faces68 --split=train
--out=/work/runs/real_fits_train.npz``)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_point_hidden.py \\
      --workdir=/work/runs/finetune_point_hidden

Why: the cascade's stages are linear in the 68 sampled descriptors (the paper's regressors), and
their training error stops falling after the third stage
(``experiments/results/align_point_two_stage_summary.json``, ``stages``), so the pair is limited
by what a linear map of the descriptors can say. This run adds beside each stage's linear
regressors a hidden layer of ``hidden_units`` GELU units whose output (136 landmark and 6 pose
offsets) is added to theirs (:func:`dff_jax.alignment.cascade.add_hidden_layer`: output weights
start at zero, so step 0 is exactly the starting pair), and trains everything end to end with the
terms of ``finetune_point_3d`` (landmarks, pose 0.1, 3D-convention points 0.5). The new layer
learns at ``hidden_learning_rate`` (the linear regressors' rate would take thousands of steps to
grow its output weights from zero). 2,000 steps from ``finetune_point_3d``'s pair, fresh faces
(pipeline seed 140000, used nowhere else).

Result (WORKSPACE.md section 14; not shipped): against the same command with
``--config.hidden_units=0`` the layer changes nothing measurable, and both runs are worse on the
photo sets than the pair they start from.
"""

from experiments.configs import finetune_point_3d


def get_config():
  config = finetune_point_3d.get_config()
  config.cascade = "/work/runs/finetune_point_3d/cascade_dff.npz"
  config.checkpoint = "/work/runs/finetune_point_3d/bundle"
  config.seed = 140_000
  config.num_steps = 2000
  config.hidden_units = 128
  config.hidden_learning_rate = 1e-4
  return config
