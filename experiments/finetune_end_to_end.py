r"""End-to-end fine-tuning through the alignment loop: a thin absl main over
``dff_jax.training.finetune.finetune_and_evaluate``.

  python -m experiments.finetune_end_to_end --config=experiments/configs/finetune_cpu.py \
      --workdir=workdirs/finetune_cpu

Any config field can be overridden (``--config.num_steps=10``, ``--config.checkpoint=DIR``,
``--config.cascade=FILE``). Re-running with the same ``--workdir`` resumes from its latest
checkpoint. Prints the summary (``summary.json``) as one JSON line.

``--export_step=N --export_dir=DIR`` (same ``--config`` and ``--workdir``, after the run) writes
the pair of the run's checkpoint at step N instead of training: ``DIR/bundle/`` and
``DIR/cascade_dff.npz``, for choosing among a run's checkpoints on a validation set.
``--export_step=N1,N2,...`` writes the uniform average of those checkpoints' parameters (a
checkpoint average).
"""

import json
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Fine-tuning config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output and resume directory.")
_EXPORT_STEP = flags.DEFINE_list("export_step", None, "Export this checkpoint's pair instead of "
                                 "training (with --export_dir); several steps, comma-separated: "
                                 "the average of their parameters.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Where --export_step writes the pair.")
flags.mark_flags_as_required(["config", "workdir"])


def _parse_steps(values):
  try:
    return [int(value) for value in values]
  except ValueError:
    raise ValueError(f"--export_step takes step numbers separated by commas, got "
                     f"{','.join(values)!r}") from None


def main(argv):
  cli.refuse_arguments(argv)
  from dff_jax.training import finetune  # pylint: disable=g-import-not-at-top
  if (_EXPORT_STEP.value is None) != (_EXPORT_DIR.value is None):
    print("finetune_end_to_end: error: pass --export_step and --export_dir together",
          file=sys.stderr)
    sys.exit(2)
  try:
    if _EXPORT_STEP.value is not None:
      summary = finetune.export_checkpoint(_CONFIG.value, _WORKDIR.value,
                                           _parse_steps(_EXPORT_STEP.value), _EXPORT_DIR.value)
    else:
      summary = finetune.finetune_and_evaluate(
          _CONFIG.value, _WORKDIR.value, log=lambda m: print(m, file=sys.stderr, flush=True))
  except (FileNotFoundError, ValueError) as error:
    print(f"finetune_end_to_end: error: {error}", file=sys.stderr)
    sys.exit(1)
  print(json.dumps(summary, default=str))


if __name__ == "__main__":
  app.run(main)
