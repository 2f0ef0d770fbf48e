r"""Saliency of the final landmark error, and its derivative with respect to the render's yaw.

  python -m experiments.saliency --out_dir=/tmp/saliency \
      [--checkpoint=DIR] [--cascade=FILE|default|fast|synthetic] [--index=0] [--seed=30000] [--yaw_step_deg=0.5]

One synthetic face rendered by the data pipeline and aligned end to end: the saliency map of
the final landmark error (``d err / d image``, exact) and its derivative with respect to the
render's yaw (the chain rule over finite-difference re-renders, checked against a plain central
difference); the method and what agreement to expect are in
:mod:`dff_jax.evaluation.saliency`.

Writes ``DIR/saliency.png`` and ``DIR/saliency.json`` (all numbers; derivatives per radian and
per degree) and prints the JSON.
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags

from experiments import cli

from dff_jax.evaluation import saliency

_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder (created).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "", "DFF bundle / workdir (default: the encoder the cascade names).")
_CASCADE = flags.DEFINE_string("cascade", "dff_jax/assets/cascade_dff.npz",
                               "Cascade .npz, or a shipped one by name (default, fast, "
                               "synthetic); its features decide DFF or SIFT.")
_INDEX = flags.DEFINE_integer("index", 0, "Face index in the pipeline.")
_SEED = flags.DEFINE_integer("seed", 30_000, "Pipeline seed (30000: the cascade's eval faces).")
_YAW_STEPS = flags.DEFINE_list("yaw_step_deg", ["0.25", "0.5", "1.0"],
                               "Finite-difference steps h (degrees), each reported.")
flags.mark_flags_as_required(["out_dir"])


def main(argv):
  cli.refuse_arguments(argv)
  try:
    summary = saliency.run(_OUT_DIR.value, _CHECKPOINT.value, _CASCADE.value, _SEED.value, _INDEX.value,
                  [float(s) for s in _YAW_STEPS.value])
  except (FileNotFoundError, ValueError) as error:
    print(f"saliency: error: {error}", file=sys.stderr)
    sys.exit(1)
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  app.run(main)
