"""End-to-end fine-tuning of the encoder and the cascade on real faces mixed with synthetic ones.

Command (after ``experiments/configs/align_real.py``; needs the real-face fit cache)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_real.py \
      --workdir=/work/runs/finetune_real \
      --config.cascade=/work/runs/align_real/cascade_dff.npz

As ``finetune_cpu`` (AdamW 1e-4 for the encoder the cascade names, Adam 3e-5 for the regressors,
800 steps of 8 faces, pipeline seed 60000) but each training face is, with probability
``real.fraction``, a view of a faces68 training face (``data_pipeline.real_views.RealFaceSource``:
the annotated photo with probability ``real.photo_fraction``, else the fitted, textured face
re-rendered at a random pose), else a synthetic face. ``summary.json`` holds the held-out
synthetic figures before and after; real-photo figures come from ``experiments.eval_alignment``.
"""

import ml_collections

from experiments.configs import finetune_cpu


def get_config():
  config = finetune_cpu.get_config()
  config.cascade = "/work/runs/align_real/cascade_dff.npz"
  config.real = ml_collections.ConfigDict(dict(
      fits="/work/runs/real_fits_train.npz", fraction=0.6, photo_fraction=0.6))
  return config
