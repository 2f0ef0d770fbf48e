r"""Calibrates an aligner's outputs to an annotation convention on annotated training faces.

  python -m experiments.calibrate_outputs --data_dir=../shared/datasets/faces68 --split=train \
      --sources=helen-train,afw --out=DIR/cascade_dff.npz [--cascade=FILE] [--checkpoint=DIR]

Aligns the faces of ``--sources`` in the split (landmark boxes), estimates per-landmark
model-space offsets that explain the aligner's mean errors there
(:func:`dff_jax.alignment.calibration.estimate_output_offsets`) and writes the cascade file with
them (``output_offsets_mm``, added to ``landmarks_px`` only, projected under each face's pose) and
the report (``output_calibration``), which it prints as JSON. The default sources are 300-W's
annotators (HELEN train and AFW): the convention of the 300-W benchmarks. faces68 is research-use
data: a file calibrated on it inherits those terms (see README).
"""

import json
import sys

from absl import app
from absl import flags

from experiments import cli

_CASCADE = flags.DEFINE_string("cascade", None, "Cascade .npz to calibrate (default: the default "
                               "pair; 'fast' and the other names of align --cascade work).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "DFF bundle (default: the cascade's own).")
_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/datasets/faces68", "faces68-layout folder.")
_SPLIT = flags.DEFINE_string("split", "train", "The split whose faces calibrate (never val).")
_SOURCES = flags.DEFINE_list("sources", ["helen-train", "afw"], "faces68 source fields to use.")
_OUT = flags.DEFINE_string("out", None, "The calibrated cascade file to write.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Faces per jitted batch.")
flags.mark_flags_as_required(["out"])


def main(argv):
  cli.refuse_arguments(argv)
  from dff_jax.alignment import calibration  # pylint: disable=g-import-not-at-top
  if _SPLIT.value == "val":
    print("calibrate_outputs: error: the val split is for validation only; calibrate on the "
          "training faces (--split=train)", file=sys.stderr)
    sys.exit(2)
  try:
    report = calibration.calibrate_cascade(_CASCADE.value, _OUT.value, _DATA_DIR.value,
                                           _SPLIT.value, _SOURCES.value, _CHECKPOINT.value,
                                           _BATCH.value)
  except (FileNotFoundError, ValueError) as error:
    from dff_jax.file_io import error_line  # pylint: disable=g-import-not-at-top
    print(f"calibrate_outputs: error: {error_line(error)}", file=sys.stderr)
    sys.exit(1)
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  app.run(main)
