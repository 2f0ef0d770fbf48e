r"""Aligns several images of ONE person jointly: shared identity, per-view pose and landmarks.

  python -m experiments.align_multiview --images=IMG1,IMG2,...|DIR|GLOB --out_dir=DIR \
      [--bbox=x0,y0,x1,y1 | --boxes=FILE.json] [--cascade=FILE] [--features=dff|sift] \
      [--checkpoint=DIR] [--face_model=default|PATH] [--share_expression] [--noprior_per_view]

(the same as ``experiments.align --multiview``, whose flags it takes.) The images, boxes,
cascade, features, checkpoint and face model are given as for ``experiments.align``. All the
images are one set: the cascade of :mod:`dff_jax.alignment.multiview` runs on all of them at
once, its shape fit stacking every view's landmark equations with one identity vector (and, with
``--share_expression``, one expression vector). By default the identity prior is counted once
per image (``prior_per_view``, see :func:`dff_jax.alignment.multiview.fit_joint_shape_rows`):
with the SIFT cascade the plain MAP weighting (``--noprior_per_view``) recovers the 3D shape
worse than single-view alignment, because the cascade's landmark errors are correlated across
views; ``experiments/eval_multiview.py`` measures both.

Without a box, each image's best face (highest detector score) is the view; ``--bbox`` /
``--boxes`` give one box per image (or ``whole``).

Outputs (written atomically):
  * ``DIR/<stem>.json`` per image, as ``experiments.align`` (``image``, ``size_wh``, ``faces``
    with one face: ``landmarks_px``, ..., ``shape_coefficients`` (the shared identity),
    ``expression_coefficients`` (the view's), ``box``, ``score``, ``crop_box``; ``features``,
    ``cascade``, ``face_model``) plus ``multiview: true``, ``share_expression`` and
    ``prior_per_view``;
  * ``DIR/<stem>_overlay.png`` per image (see ``experiments.align``);
  * ``DIR/multiview.json``: ``shape_coefficients`` (shared), ``share_expression``, ``views``
    (``stem``, ``image``, ``json``, ``expression_coefficients``, ``pose``), ``features``,
    ``cascade``, ``face_model``.

An image that cannot be read, whose box is bad or where no face is found is reported in one
line and left out of the set (exit status 1); bad arguments, no usable image, or a missing
cascade / checkpoint give one line ``align_multiview: error: ...`` and exit status 2.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from experiments import cli
from experiments import align_flags

FLAGS = flags.FLAGS


def main(argv):
  cli.refuse_arguments(argv)
  if not FLAGS.images or not FLAGS.out_dir:
    print("align_multiview: error: --images and --out_dir are required", file=sys.stderr)
    sys.exit(2)
  cli.use_compilation_cache()
  align_flags.run_multiview(FLAGS, "align_multiview")


if __name__ == "__main__":
  align_flags.define_flags()  # The same flags as experiments.align (its --multiview ones included).
  app.run(main)
