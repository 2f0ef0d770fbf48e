"""The DFF encoder continued on real faces: the paper's data recipe (fitted, textured real faces
re-rendered from new viewpoints) mixed with the synthetic pairs it was trained on.

Command (needs the real-face fit cache, research-use data kept outside the repository)::

  python -m experiments.fit_real_faces --split=train --out=/work/runs/real_fits_train.npz
  python -m experiments.train_dff --config=experiments/configs/dff_real.py \
      --workdir=/work/runs/dff_real --export_dir=/work/runs/dff_real/bundle

Starts from the shipped ``dff_default`` encoder (``init_encoder``; the 100 patch classifiers start
afresh, hence the warm-up) and trains on pairs drawn 70 % from
``data_pipeline.real_views.RealPairSource`` (kinds photo + re-render 50 %, two re-renders 25 %,
photo + random similarity warp 25 %) and 30 % from the synthetic pipeline, same loss and sizes as
``dff_cpu``. Why this mix: the real pairs carry what renders lack (real skin, hair, glasses,
backgrounds), the synthetic ones keep exact labels over the whole yaw range and keep the
encoder from forgetting them (held-out synthetic PCK in ``metrics.jsonl`` watches that).
"""

import ml_collections

from experiments.configs import dff_cpu


def get_config():
  config = dff_cpu.get_config()
  config.init_encoder = "dff_jax/assets/dff_default"
  config.num_steps = 2500
  config.learning_rate = 5e-4
  config.warmup_steps = 200
  config.data.seed = 70_000
  config.real = ml_collections.ConfigDict(dict(
      fits="/work/runs/real_fits_train.npz", fraction=0.7, pair_kinds=(0.5, 0.25, 0.25)))
  config.eval_every = 500
  return config
