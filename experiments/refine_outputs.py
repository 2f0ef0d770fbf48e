r"""Fits an aligner's output refinement on annotated training faces.

  python -m experiments.refine_outputs --data_dir=../shared/datasets/faces68 --split=train \
      --sources=helen-train,afw --out=DIR/cascade_dff.npz [--cascade=FILE] [--checkpoint=DIR]

Aligns the faces of ``--sources`` in the split from their landmark boxes (each also mirrored
left-right unless ``--mirror=false``) and ``--num_synthetic`` renders of the pipeline (every yaw,
from jittered boxes, labels in the cascade's convention), fits one ridge step from the descriptors at the output
points to the annotated points (:mod:`dff_jax.alignment.refinement`) and writes the cascade file
with it (``refine_weights``: it moves ``landmarks_px`` only) and the report
(``output_refinement``), which it prints as JSON. The default sources are 300-W's annotators
(HELEN train and AFW). faces68 is research-use data: a file refined on it inherits those terms
(see README).
"""

import json
import sys

from absl import app
from absl import flags

from experiments import cli

_CASCADE = flags.DEFINE_string("cascade", None, "Cascade .npz to refine (default: the default "
                               "pair; 'fast' and the other names of align --cascade work).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "DFF bundle (default: the cascade's own).")
_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/datasets/faces68", "faces68-layout folder.")
_SPLIT = flags.DEFINE_string("split", "train", "The split whose faces it is fitted on (never val).")
_SOURCES = flags.DEFINE_list("sources", ["helen-train", "afw"], "faces68 source fields to use.")
_MIRROR = flags.DEFINE_boolean("mirror", True, "Also fit on every face mirrored left-right.")
_SYNTHETIC = flags.DEFINE_integer("num_synthetic", 0, "Renders of the pipeline to fit on too "
                                  "(every yaw; labels in the cascade's convention).")
_HELD_OUT = flags.DEFINE_integer("held_out_every", 5, "Every n-th face chooses the ridge lambda.")
_OUT = flags.DEFINE_string("out", None, "The refined cascade file to write.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Faces per jitted batch.")
flags.mark_flags_as_required(["out"])


def main(argv):
  cli.refuse_arguments(argv)
  from dff_jax.alignment import refinement  # pylint: disable=g-import-not-at-top
  if _SPLIT.value == "val":
    print("refine_outputs: error: the val split is for validation only; fit on the training "
          "faces (--split=train)", file=sys.stderr)
    sys.exit(2)
  try:
    report = refinement.refine_cascade(_CASCADE.value, _OUT.value, _DATA_DIR.value, _SPLIT.value,
                                       _SOURCES.value, _CHECKPOINT.value, _BATCH.value,
                                       _MIRROR.value, _HELD_OUT.value, _SYNTHETIC.value)
  except (FileNotFoundError, ValueError) as error:
    from dff_jax.file_io import error_line  # pylint: disable=g-import-not-at-top
    print(f"refine_outputs: error: {error_line(error)}", file=sys.stderr)
    sys.exit(1)
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  app.run(main)
