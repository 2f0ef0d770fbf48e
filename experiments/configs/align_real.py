"""The alignment cascade trained on real faces, their re-rendered large-pose views and synthetic
faces (issue "real photographs"; the paper's recipe: 300W-LP-style face profiling).

Needs the real-face fit cache (research-use data: keep it outside the repository)::

  python -m experiments.fit_real_faces --data_dir=../shared/datasets/faces68 --split=train \
      --out=/work/runs/real_fits_train.npz
  python -m experiments.train_alignment --config=experiments/configs/align_real.py \
      --workdir=/work/runs/align_real --config.real.fits=/work/runs/real_fits_train.npz

Training faces (pipeline seed 20000): ``real.num_faces`` views of the faces68 training faces
(``data_pipeline.real_views.RealFaceSource``: the annotated photo with probability
``real.photo_fraction``, else the fitted, textured face re-rendered at a random pose of
``data``, yaw uniform in +-90 degrees, over a real background) followed by
``num_train_faces`` synthetic faces, all with detector-like jittered boxes. Descriptor maps are
recomputed per stage (``max_faces_in_memory``). The held-out figures of ``summary_dff.json`` are
on 600 synthetic faces of seed 30000; real-photo figures come from ``experiments.eval_alignment``.
"""

import ml_collections

from experiments.configs import align_cpu


def get_config():
  config = align_cpu.get_config()
  config.num_train_faces = 2000
  config.real = ml_collections.ConfigDict(dict(
      fits="/work/runs/real_fits_train.npz", num_faces=7000, photo_fraction=0.6))
  config.max_faces_in_memory = 4000
  return config
