"""The shipped alignment cascade, trained on synthetic faces on a 2-core CPU.

Command (DFF features from the shipped encoder; ``--config.features=sift`` for the baseline)::

  python -m experiments.train_alignment --config=experiments/configs/align_cpu.py \
      --workdir=workdirs/align_cpu

Writes ``cascade_<features>.npz`` and ``summary_<features>.json`` (bbox-normalised NME by yaw bin
on held-out synthetic faces) into the workdir.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.features = "dff"          # "dff" or "sift"
  config.checkpoint = ""           # DFF bundle / workdir; "" = the shipped default
  config.face_model = "default"
  config.num_train_faces = 4000
  config.num_eval_faces = 600
  config.batch_size = 32
  # Pipeline seeds disjoint from the encoder's training (seed 0) and validation seeds.
  config.train_seed = 20_000
  config.eval_seed = 30_000
  # 192 px renders with the face at 0.18-0.27 of the side (outer-eye-corner distance): the crop
  # around the jittered landmark box is then ~120 px, resampled about 1:1 to the 128 px crop,
  # with real background around the face instead of zero padding.
  config.data = ml_collections.ConfigDict(dict(image_size=192, num_views=2,
                                               num_correspondences=16,
                                               face_size_range=(0.18, 0.27)))
  config.box_jitter = ml_collections.ConfigDict(dict(scale=0.1, shift=0.06, aspect=0.1))
  config.cascade = ml_collections.ConfigDict(dict(
      num_stages=5, crop_size=128, box_scale=1.25, shape_regularisation=10.0,
      visibility_threshold=0.0))
  config.landmark_regularisation = 20.0   # paper value
  config.pose_regularisation = 10.0       # paper value
  # Each stage picks its lambdas from base * grid by the error on every 10th training face
  # (held out from that choice only; the final solve uses all faces). The paper's fixed values
  # under-regularise with D x 68 features and a few thousand faces (the 1,500-face SIFT cascade
  # with fixed lambdas: 0.87 crop px training error before its last stage, ~6 px held out).
  config.regularisation_grid = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)
  config.validation_every = 10
  return config
