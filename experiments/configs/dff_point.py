"""The point-head DFF encoder (issue 12): descriptors computed only where they are read.

Command (needs the real-face fit cache and the ``dff_real`` encoder, research-use data kept
outside the repository)::

  python -m experiments.train_dff --config=experiments/configs/dff_point.py \\
      --workdir=/work/runs/dff_point --export_dir=/work/runs/dff_point/bundle

:class:`dff_jax.encoder.PointDFFEncoder` at the ``dff_cpu`` widths: the contracting half of the
U-Net starts from the ``dff_real`` encoder's levels (``init_encoder_scope = "pyramid"``), the
point head (240 -> 128 -> 64) and the 100 patch classifiers start afresh. Same data mix as
``dff_real`` (70 % real pairs: photo + re-render 50 %, two re-renders 25 %, photo + warp 25 %;
30 % synthetic) and the same loss on 2048 face pixels per image, which the point head describes
alone (no dense map is computed in training).
"""

from experiments.configs import dff_real


def get_config():
  config = dff_real.get_config()
  config.encoder.head = "point"
  config.encoder.head_hidden = 128
  config.init_encoder = "/work/runs/dff_real/bundle"
  config.init_encoder_scope = "pyramid"
  config.num_steps = 3000
  config.learning_rate = 1e-3
  config.warmup_steps = 200
  config.data.seed = 80_000
  return config
