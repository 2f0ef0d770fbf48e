"""Learns the alignment cascade's regressors on synthetic faces (stage-by-stage ridge regression).

  python -m experiments.train_alignment --config=experiments/configs/align_cpu.py \
      --workdir=workdirs/align_cpu [--config.features=sift] [--config.num_train_faces=...]

See :mod:`dff_jax.alignment.training`.
"""

import json
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import cli

from dff_jax.alignment import training

_CONFIG = config_flags.DEFINE_config_file("config", None, "Alignment training config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  cli.refuse_arguments(argv)
  try:
    summary = training.train_alignment(_CONFIG.value, _WORKDIR.value,
                                       log=lambda m: print(m, file=sys.stderr, flush=True))
  except (FileNotFoundError, ValueError) as error:
    print(f"train_alignment: {error}", file=sys.stderr)
    sys.exit(1)
  print(json.dumps(summary))


if __name__ == "__main__":
  app.run(main)
