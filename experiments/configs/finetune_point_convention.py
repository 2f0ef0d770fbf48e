"""End-to-end fine-tuning of the shipped point-head pair with every real face in 300-W's landmark
convention.

Commands (the fit cache with the other sources' annotations moved into the 300-W sources'
convention, then the run)::

  python -m experiments.fit_real_faces --data_dir=../shared/datasets/faces68 --split=train \\
      --reference_sources=helen-train,afw --out=/work/runs/real_fits_train_300w.npz
  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_point_convention.py \\
      --workdir=/work/runs/finetune_point_convention

Why: 78 % of the faces68 training faces are YouTube Faces frames labelled for Udacity's "Facial
Keypoints", whose annotators place the brows, eyes and mouth millimetres away from where 300-W's
do (each source's landmark offsets, :func:`dff_jax.real_fits.estimate_landmark_offsets`, differ
by 3 mm on average); the validation sets and the held-back photos use 300-W-style labels. This
run trains on the moved cache (:func:`dff_jax.real_fits.fit_in_reference_convention`) and, like
``finetune_point_offsets``, estimates the cascade's landmark offsets from it and moves the
renders' labels into that convention. Otherwise as ``finetune_point_offsets``; fresh faces
(pipeline seed 190000, used nowhere else).
"""

from experiments.configs import finetune_point_offsets


def get_config():
  config = finetune_point_offsets.get_config()
  config.seed = 190_000
  config.real.fits = "/work/runs/real_fits_train_300w.npz"
  config.landmark_offsets_rounds = 10   # as this run was made (finetune_point_offsets: 5)
  return config
