r"""Demo on the embedded defaults only (no ../shared): align a portrait, fit a face to landmarks.

  python -m experiments.demo --out_dir=out/demo [--image=...] [--bbox=x0,y0,x1,y1] [--seed=0]

1. **Alignment**: the shipped DFF encoder and cascade align the faces of a public-domain portrait
   shipped in the repo (``experiments/assets/astronaut.jpg``, NASA's portrait of Eileen Collins,
   with its face box in ``astronaut.json``): writes ``DIR/astronaut.json`` (its ``faces``: 68
   landmarks, visibility, pose, shape and expression coefficients of each) and
   ``DIR/astronaut_overlay.png``, exactly as ``python -m experiments.align`` does.
2. **Landmark fitting**: synthesises a random face of the default model at a random known pose
   (yaw in [-60, 60] deg, pitch/roll in [-10, 10] deg, seeded), takes its 68 landmarks plus
   Gaussian noise of ``--noise_px`` pixels, fits :func:`dff_jax.alignment.fit_landmarks` and
   reports the true and recovered pose and the reprojection NME. Writes ``DIR/demo_fit.png``: the
   true face with the true landmarks (green) and the fitted ones (red), and the fitted face.

Prints a short human-readable summary (what was aligned, the figures, where the pictures are);
the JSON report of both goes to ``DIR/demo.json``. About 30 s on a 2-core CPU (mostly JAX
compilation). Library: :mod:`dff_jax.demo`.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags

from dff_jax import demo
from experiments import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the command's flags (only when run as a program)."""
  flags.DEFINE_string("out_dir", "out/demo", "Output folder.")
  flags.DEFINE_string("image", str(demo.PORTRAIT), "Portrait to align.")
  flags.DEFINE_string("bbox", None, "Face box x0,y0,x1,y1 (default: <image stem>.json's box, "
                      "else the faces the detector finds; 'whole': the whole image).")
  flags.DEFINE_integer("seed", 0, "Seed of the random face and pose.")
  flags.DEFINE_float("noise_px", 1.0, "Landmark noise (pixels, Gaussian sigma).")
  flags.DEFINE_string("results", None, "Also write the report, with the sha256 of the cascade and "
                      "encoder used, to this JSON file (e.g. experiments/results/demo.json).")


def main(argv):
  cli.refuse_arguments(argv)
  cli.use_compilation_cache()
  try:
    report = demo.run_demo(FLAGS.out_dir, FLAGS.image, FLAGS.bbox, FLAGS.seed, FLAGS.noise_px)
  except (OSError, ValueError) as error:
    sys.exit(f"demo: error: {' '.join(str(error).split())}")
  if FLAGS.results:
    demo.write_results(FLAGS.results, report, FLAGS.out_dir, FLAGS.image)
  print(demo.summary_text(report, FLAGS.out_dir))


if __name__ == "__main__":
  define_flags()
  app.run(main)
