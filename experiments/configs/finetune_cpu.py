"""End-to-end fine-tuning of the DFF encoder and the cascade regressors on a 2-core CPU (~35 min).

Command (from the repository root; re-running it resumes from the last checkpoint)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_cpu.py \
      --workdir=workdirs/finetune_cpu

By default starts from the shipped DFF cascade (``dff_jax/assets/cascade_dff_synthetic.npz``) and the
encoder it names: that pair is already the result of this fine-tuning (it continues from there).
The shipped pair was made from the two-stage model::

  python -m experiments.train_alignment --config=experiments/configs/align_cpu.py --workdir=W1
  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_cpu.py \
      --workdir=W2 --config.cascade=W1/cascade_dff.npz --config.checkpoint=dff_jax/assets/dff_default

``--config.checkpoint=DIR`` (bundle or training workdir) overrides the encoder,
``--config.cascade=FILE`` the cascade ("" = zero regressors). Optimises the encoder (AdamW 1e-4) and every stage's landmark / pose
regressors (Adam 3e-5) on the visibility-aware bbox NME after the last stage, 8 synthetic faces
(192 px renders, 128 px crops, 5 stages, remat per stage) per step, 800 steps (6400 faces of seed
60000), then evaluates the two-stage and the fine-tuned model on 300 held-out faces (seed 30000,
the cascade's evaluation seed) and writes ``summary.json``, ``bundle/`` and ``cascade_dff.npz``.

Measured on the 2-core CPU machine (``--config.checkpoint=/work/runs/dff_snap --config.cascade=
--config.num_steps=12``: the step-1000 snapshot of the dff_cpu encoder, 0.45 M parameters, D = 64,
with zero regressors; same shapes and cost as the real run), ``nice -n 15`` while the encoder's
own training ran at normal priority (load average ~5): 1.5-2.3 s per step in steady state
(``seconds_per_step`` in metrics.jsonl; mostly the encoder's backward pass: the cascade's share
is ~0.25 s, see dff_jax/benchmarking/remat.py (python -m experiments.benchmark --what=remat)), 2.65 s per step averaged over the 12 steps including the ~10 s first compile; rendering
the 8 faces takes ~0.2 s of it. So 800 steps take ~25-35 min on an otherwise idle machine, plus
~1 min for the evaluation (300 faces rendered once, aligned twice).

Expected result: the held-out bbox NME of the fine-tuned model at or below the two-stage model's
(``summary.json``: ``before.nme_mean`` vs ``after.nme_mean``, and per yaw bin).
"""

import ml_collections

SECONDS_PER_STEP = 2.2  # Measured (see the docstring): steady state under other load.


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Starting point.
  config.features = "dff"          # used only when cascade == "" ("dff" or "sift")
  config.checkpoint = ""           # DFF bundle / training workdir; "" = the shipped default
  config.cascade = "dff_jax/assets/cascade_dff_synthetic.npz"  # "" = zero regressors
  config.face_model = "default"    # used only when cascade == "" (else the cascade's own)
  config.cascade_config = ml_collections.ConfigDict(dict(
      num_stages=5, crop_size=128, box_scale=1.25, shape_regularisation=10.0,
      visibility_threshold=0.0))  # used only when cascade == ""
  config.remat = True              # jax.checkpoint per cascade stage

  # Data: synthetic faces as in experiments/configs/align_cpu.py, own seeds.
  config.seed = 60_000             # training faces (cascade: 20000 train, 30000 eval)
  config.eval_seed = 30_000        # held-out faces (the cascade's evaluation seed)
  config.num_train_faces = 1_000_000
  config.num_eval_faces = 300
  config.eval_batch_size = 16
  config.data = ml_collections.ConfigDict(dict(image_size=192, num_views=2,
                                               num_correspondences=16,
                                               face_size_range=(0.18, 0.27)))
  config.box_jitter = ml_collections.ConfigDict(dict(scale=0.1, shift=0.06, aspect=0.1))

  # Optimisation.
  config.num_steps = 800
  config.schedule_steps = 0        # horizon of the cosine decay (0 = num_steps)
  config.global_batch_size = 8
  config.learning_rate = 1e-4      # encoder (AdamW)
  config.cascade_learning_rate = 3e-5  # regressors (Adam)
  config.warmup_steps = 50
  config.end_learning_rate_fraction = 0.1
  config.weight_decay = 1e-4
  config.grad_clip_norm = 1.0
  # > 0: keep an exponential moving average of the trained parameters with this decay (0.998
  # averages over about 500 steps); the run exports the average (finetune.update_ema).
  config.ema_decay = 0.0
  config.pose_loss_weight = 0.0    # > 0: add this times the mean |angle error| (rad) to the loss
  # > 0: add this times the landmark error of landmarks_3d_px against the 3D convention's truth
  # (finetune.landmarks_3d_targets: annotated inner points, the true shape's jaw line).
  config.landmarks_3d_loss_weight = 0.0
  # > 0: add a residual hidden layer of this many GELU units to every stage of the starting
  # cascade (cascade.add_hidden_layer; a no-op at step 0), trained at hidden_learning_rate
  # (0 = cascade_learning_rate).
  config.hidden_units = 0
  config.hidden_learning_rate = 0.0
  # The cascade's landmark convention (finetune.landmark_offsets_for): "" keeps the starting
  # cascade's landmark offsets, "fits" estimates them from config.real.fits (the annotators'
  # convention; render labels are moved into it), "none" uses the model's own vertices.
  config.landmark_offsets = ""
  config.landmark_offsets_rounds = 10   # alternations of the "fits" estimate
  # Directions of the coefficient space each stage's shape fit solves for
  # (cascade.with_fit_modes: the fit's normal equations are fit_modes square instead of
  # identity + expression): 0 keeps the starting cascade's (all, if it names none).
  config.fit_modes = 0
  # A student encoder: set config.student = ConfigDict(encoder overrides, e.g. convs_per_level)
  # to train a new encoder (started from the loaded one where shapes agree) with this weight
  # times the distance of its feature pyramid to the loaded encoder's (finetune_thin.py).
  config.distill_weight = 0.0

  # Machinery (dff_jax.train's mesh / checkpoints / progress).
  config.sharding = ml_collections.ConfigDict(dict(params="replicated", fsdp=1))
  config.checkpoint_every = 100
  config.max_checkpoints_to_keep = 2
  config.log_every = 10
  config.progress_bar = True
  config.xla_fast_compile = False
  config.debug_nan_step = -1
  return config
