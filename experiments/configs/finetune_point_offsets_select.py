"""The shipped default continued for 2,000 steps with a checkpoint kept every 250 steps, for
choosing the pair among them on faces68 val (model selection; AFLW2000-3D dev stays the
independent check).

Command (the run of ``finetune_point_offsets_more2``, seed 210000, from the shipped default's files;
only the checkpoint schedule differs, which does not change the training)::

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_point_offsets_select.py \\
      --workdir=/work/runs/more2_traj
  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_point_offsets_select.py \\
      --workdir=/work/runs/more2_traj --export_step=STEP --export_dir=DIR
  python -m experiments.eval_alignment --dataset=faces68 --data_dir=../shared/datasets/faces68 \\
      --cascade=DIR/cascade_dff.npz --out_dir=EVAL

Why: the end of ``finetune_point_offsets_more2`` lost on both photo sets, with the nose shifted
on faces68 val; the kept checkpoints show how that shift moves during the run (WORKSPACE
section 14).
"""

from experiments.configs import finetune_point_offsets_more2


def get_config():
  config = finetune_point_offsets_more2.get_config()
  config.checkpoint_every = 250
  config.max_checkpoints_to_keep = 9
  return config
