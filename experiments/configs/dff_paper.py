"""The paper's setting: 224 x 224 grey input, D = 64, 100 segmentations x 500 patches (TPU pod).

Command (one copy per TPU host; ``--distributed`` lets ``jax.distributed.initialize()`` find the
pod)::

  python -m experiments.train_dff --config=experiments/configs/dff_paper.py \
      --workdir=gs://BUCKET/dff_paper --distributed

Model: the ``paper`` encoder preset, a 4-level U-Net (64, 128, 256, 512), 2 convs per level,
7.19 M parameters, bfloat16 activations (float32 head, loss and parameters); 100 x 500 patch
classifiers (3.2 M parameters), 8 segmentations trained per step on 4096 random face pixels per
image. Global batch 256 pairs (512 images), 100k steps (51 M images), AdamW 1e-3, cosine.

Expected throughput per chip (worked out, not measured: no TPU here):

* FLOPs: XLA's cost analysis of the jitted train step (forward + backward + AdamW, this config,
  1 pair per device; ``jax.jit(train_step).lower(...).cost_analysis()["flops"]``) gives
  337.4 GFLOP per pair, i.e. **169 GFLOP per 224 x 224 image** (almost all in the 3x3
  convolutions; the patch heads add < 1 %).
* Assumptions: TPU v5e, 197 TFLOP/s bf16 peak per chip; 35 % of peak reached (the full-resolution
  levels have only 64 and 128 channels, which fill half / all of the 128-wide MXU, and
  GroupNorm / resizes are memory bound), i.e. ~69 TFLOP/s. On TPU v4 (275 TFLOP/s) the same
  fraction gives ~96 TFLOP/s.
* Result: 69e12 / 169e9 ~ **410 images/s per v5e chip** (~200 pairs/s; ~570 images/s on v4).
  A v5e-32 slice (8 pairs per chip per step) then takes ~0.04 s per step, so 100k steps take
  ~1.1 h of compute.
* The data pipeline is the real bottleneck: the NumPy renderer makes ~10 pairs/s per CPU core at
  128 x 128 (fewer at 224), so feeding 32 chips at 200 pairs/s needs several hundred host cores
  (``num_workers`` per host) or pre-rendered shards read by grain.
"""

from experiments.configs import base_config


def get_config():
  config = base_config()
  config.num_steps = 100_000
  config.global_batch_size = 256
  config.learning_rate = 1e-3
  config.warmup_steps = 2000
  config.weight_decay = 1e-4

  config.encoder.features = (64, 128, 256, 512)
  config.encoder.descriptor_dim = 64
  config.encoder.convs_per_level = 2
  config.encoder.channels = 1
  config.encoder.dtype = "bfloat16"

  config.loss.num_segmentations = 100
  config.loss.num_patches = 500
  config.loss.num_segmentations_per_step = 8
  config.loss.num_pixels_per_image = 4096

  config.data.image_size = 224
  config.data.num_examples = 10_000_000
  config.num_workers = 32

  config.eval.num_pairs = 512
  config.eval.batch_size = 256
  config.eval_every = 5000
  config.log_every = 100
  config.checkpoint_every = 5000
  config.progress_bar = True
  return config
