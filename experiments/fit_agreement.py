r"""Fits a cascade's descriptor template and agreement threshold, or evaluates them.

  python -m experiments.fit_agreement --cascade=FILE --out=DIR/cascade_dff.npz \
      [--data_dir=../shared/datasets/faces68 --split=train --sources=helen-train,afw]
  python -m experiments.fit_agreement --evaluate --cascade=default|fast|FILE --results=FILE \
      [--data_dir=../shared/datasets/faces68 --aflw_dir=../shared/datasets/aflw2000_3d_dev]

Fitting (:func:`dff_jax.alignment.agreement.fit_agreement`) aligns the faces of ``--sources``
in the split from their landmark boxes (each also mirrored) and ``--num_synthetic`` renders of
every yaw, stores each landmark's mean
descriptor as the last stage reads it (``descriptor_template``) and the threshold
``min_agreement`` (meta ``agreement``: the 1st percentile of all those faces' agreement, with
training-set figures for boxes on no face), writes the cascade file and prints the report as
JSON. ``--evaluate`` measures a cascade with a template on held-out sets: the faces68 val faces
and one box per val photo away from its face, the AFLW2000-3D dev faces (validation only) and
generated face-free images of another seed, and writes ``--results``. faces68 is research-use
data: a file fitted on it inherits those terms (see README).
"""

import json
import sys

from absl import app
from absl import flags

from experiments import cli

_CASCADE = flags.DEFINE_string("cascade", None, "Cascade .npz (default: the default pair; "
                               "'fast' and the other names of align --cascade work).")
_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/datasets/faces68", "faces68-layout folder.")
_SPLIT = flags.DEFINE_string("split", "train", "The split the template is fitted on (never val).")
_SOURCES = flags.DEFINE_list("sources", ["helen-train", "afw"], "faces68 source fields to fit on.")
_SYNTHETIC = flags.DEFINE_integer("num_synthetic", 2400, "Renders of every yaw to fit on too.")
_OUT = flags.DEFINE_string("out", None, "The cascade file to write (fitting).")
_EVALUATE = flags.DEFINE_boolean("evaluate", False, "Evaluate --cascade's template instead.")
_AFLW_DIR = flags.DEFINE_string("aflw_dir", "../shared/datasets/aflw2000_3d_dev",
                                "AFLW2000-3D folder for --evaluate ('' to leave it out).")
_NUM_FREE = flags.DEFINE_integer("num_face_free", 300, "Generated face-free images.")
_RESULTS = flags.DEFINE_string("results", None, "JSON file --evaluate writes.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Faces per jitted batch.")


def _fail(message: str, status: int = 2) -> None:
  print(f"fit_agreement: error: {message}", file=sys.stderr)
  sys.exit(status)


def _evaluate():
  from dff_jax import file_io  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import agreement  # pylint: disable=g-import-not-at-top
  report = agreement.evaluate_agreement(_CASCADE.value, _DATA_DIR.value, _AFLW_DIR.value or None,
                                        _NUM_FREE.value, _BATCH.value)
  report["command"] = "python -m experiments.fit_agreement " + " ".join(sys.argv[1:])
  file_io.write_json_atomic(_RESULTS.value, report)
  print(json.dumps(report, indent=1))


def main(argv):
  cli.refuse_arguments(argv)
  if _EVALUATE.value == bool(_OUT.value):
    _fail("give --out=FILE to fit a template, or --evaluate with --results=FILE")
  if _EVALUATE.value and not _RESULTS.value:
    _fail("--evaluate needs --results=FILE")
  if _SPLIT.value == "val" and not _EVALUATE.value:
    _fail("the val split is for validation only; fit on the training faces (--split=train)")
  if min(_NUM_FREE.value, _SYNTHETIC.value) < 0 or _BATCH.value < 1:
    _fail("--num_face_free and --num_synthetic must be >= 0 and --batch_size >= 1")
  from dff_jax.alignment import agreement  # pylint: disable=g-import-not-at-top
  from dff_jax.file_io import error_line  # pylint: disable=g-import-not-at-top
  try:
    if _EVALUATE.value:
      _evaluate()
      return
    report = agreement.fit_agreement(_CASCADE.value, _OUT.value, _DATA_DIR.value, _SPLIT.value,
                                     _SOURCES.value, num_synthetic=_SYNTHETIC.value,
                                     num_face_free=_NUM_FREE.value,
                                     batch_size=_BATCH.value)
  except (FileNotFoundError, ValueError) as error:
    _fail(error_line(error), 1)
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  app.run(main)
