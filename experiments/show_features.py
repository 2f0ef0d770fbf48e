r"""Shows DFF descriptors as colours, and descriptor matches between two face images.

  python -m experiments.show_features --image=a.jpg [--bbox=x0,y0,x1,y1] \
      [--image_b=b.jpg] [--bbox_b=x0,y0,x1,y1] [--checkpoint=DIR] [--box_scale=1.8] \
      --out=features.png

One image: ``[crop | descriptor colours]``. Two images: top row ``[crop A | crop B]`` with lines
from a grid of face points of A (``--grid`` x ``--grid`` points over the middle of A's face
box) to their best descriptor match in B (largest cosine similarity over B's face box; a dot of
the same colour marks both ends), bottom row the descriptor colours of A and B.

Descriptor colours: the first three principal components of the descriptors as R, G, B. The PCA
is fitted on the pixels inside the face boxes (the whole crop without ``--bbox``) of both images
together, so the same colour means a similar descriptor in both; each component is stretched
between its 1st and 99th percentile over those pixels. A well-trained DFF shows smooth colour
gradients that follow the face (left/right, up/down, nose/eyes/mouth) and the same colours at the
same face parts in both views.

Crops are made as in :mod:`dff_jax.descriptor_maps` (square box ``box_scale`` times the face
box; the descriptors at the encoder's training image size, shown upscaled to ``--panel_size``).
Bad input: one line on stderr, exit status 1. Library: :mod:`dff_jax.feature_figures`.
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags

from experiments import cli

from dff_jax import descriptor_maps
from dff_jax import feature_figures

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("image", None, "First image file.")
  flags.DEFINE_string("image_b", None, "Optional second image (matches are drawn A -> B).")
  flags.DEFINE_string("bbox", None, "Face box of the first image x0,y0,x1,y1 (default: whole).")
  flags.DEFINE_string("bbox_b", None, "Face box of the second image (default: whole image).")
  flags.DEFINE_float("box_scale", descriptor_maps.DEFAULT_BOX_SCALE,
                     "Square crop side / face box side.")
  flags.DEFINE_string("checkpoint", None,
                      "DFF inference bundle or training workdir (default: shipped).")
  flags.DEFINE_integer("panel_size", 256, "Displayed size of each panel in pixels.")
  flags.DEFINE_integer("grid", 7, "Grid points per side for the matches.")
  flags.DEFINE_string("out", None, "Output PNG.")


def main(argv):
  cli.refuse_arguments(argv)
  try:
    if not FLAGS.out:
      raise ValueError("--out=FILE.png is required")
    descriptor_maps.check_input_file(FLAGS.image, "image")
    if FLAGS.image_b:
      descriptor_maps.check_input_file(FLAGS.image_b, "image_b")
    bbox, bbox_b = descriptor_maps.parse_bbox(FLAGS.bbox), descriptor_maps.parse_bbox(FLAGS.bbox_b)
    model = descriptor_maps.load_dff(FLAGS.checkpoint)
    document = feature_figures.show_features(
        FLAGS.image, FLAGS.out, FLAGS.image_b, bbox, bbox_b, box_scale=FLAGS.box_scale,
        panel_size=FLAGS.panel_size, grid=FLAGS.grid, model=model)
  except (OSError, ValueError) as error:
    from dff_jax.file_io import error_line  # pylint: disable=g-import-not-at-top
    sys.exit("show_features: error: " + error_line(error))
  print(json.dumps(dict(out=document["out"], shape=document["shape"])))


if __name__ == "__main__":
  define_flags()
  app.run(main)
