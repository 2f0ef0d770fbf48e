r"""Trains the DFF descriptor network: a thin absl main over ``dff_jax.train.train_and_evaluate``.

  python -m experiments.train_dff --config=experiments/configs/dff_tiny.py --workdir=/tmp/dff_tiny

Any config field can be overridden, e.g. ``--config.num_steps=10 --config.num_workers=2``.
Re-running with the same ``--workdir`` resumes from its latest checkpoint. ``--export_dir=DIR``
writes an inference bundle of the final encoder (``dff_jax.checkpoint.export_inference_bundle``).
Multi-host: run one copy per host with ``--coordinator_address=HOST:PORT --num_processes=N
--process_id=I`` (or nothing on a TPU pod / SLURM, where ``jax.distributed.initialize()`` finds
them itself with ``--distributed``).
"""

import logging as std_logging
import os
from pathlib import Path
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output and resume directory.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None,
                                  "If set, write an inference bundle of the final encoder here.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() (auto-detected cluster).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 for jax.distributed.initialize.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(std_logging.Filter):
  """Drops the INFO chatter of Orbax / grain (hundreds of lines per checkpoint); keeps warnings."""

  def filter(self, record):
    return os.environ.get("DFF_VERBOSE") or record.levelno >= std_logging.WARNING or not any(
        name in record.pathname for name in ("/orbax/", "/grain/"))


def _check_inputs() -> None:
  """Exits with one line (status 2) when the config cannot be loaded or the workdir not written."""
  try:
    _CONFIG.value.keys()  # raises here if the config file failed to load
  except Exception as error:  # pylint: disable=broad-except  (ml_collections wraps every error)
    path = flags.FLAGS["config"].config_filename
    reason = " ".join(str(error).split("\n")[-1].split()) or type(error).__name__
    sys.exit(f"train_dff: error: cannot load --config={path} ({reason}); pass an existing "
             "config file with get_config(), e.g. experiments/configs/dff_tiny.py")
  workdir = Path(_WORKDIR.value)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    if not os.access(workdir, os.W_OK):
      raise PermissionError(13, "Permission denied", str(workdir))
  except OSError as error:
    from dff_jax.file_io import error_line  # pylint: disable=g-import-not-at-top
    sys.exit(f"train_dff: error: --workdir: {error_line(error)}")


def main(argv):
  cli.refuse_arguments(argv)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  _check_inputs()
  import jax  # pylint: disable=g-import-not-at-top
  if _COORDINATOR.value:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()
  from dff_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from dff_jax import train  # pylint: disable=g-import-not-at-top
  logging.info("JAX process %d / %d, %d local devices, %d devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  state = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.info("Final step %d, params digest %s", int(jax.device_get(state.step)),
               train.params_digest(state.params))
  if _EXPORT_DIR.value and jax.process_index() == 0:
    out = checkpoint.export_inference_bundle(_WORKDIR.value, _EXPORT_DIR.value)
    logging.info("Exported the inference bundle to %s", out)


def _parse_flags(argv):
  """absl's flag parsing, with one line (status 2) for a config file that raises while loading."""
  try:
    return app.parse_flags_with_usage(argv)
  except Exception as error:  # pylint: disable=broad-except  (a config file can raise anything)
    reason = " ".join(str(error).split()) or type(error).__name__
    sys.exit(f"train_dff: error: cannot load the --config file ({type(error).__name__}: "
             f"{reason}); fix it or pass another config, e.g. experiments/configs/dff_tiny.py")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
