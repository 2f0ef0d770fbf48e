r"""Writes the DFF descriptor map of a face crop of one image.

  python -m experiments.extract_features --image=face.jpg [--bbox=x0,y0,x1,y1] \
      [--box_scale=1.8] [--checkpoint=DIR] --out=face_dff.npy

Writes ``face_dff.npy``: ``[S, S, D]`` float32 descriptors, unit L2 norm over D, where ``S`` is
the encoder's training image size (``image_size`` in the bundle's config.json, e.g. 128) and ``D``
its descriptor size; and beside it ``face_dff.json`` with ``box`` = ``[x0, y0, x1, y1]``, the
square image region the map covers, in the image's pixels (our convention: pixel ``(i, j)`` has
its centre at ``(j + 0.5, i + 0.5)``, so the region of an ``H x W`` image is ``[0, W] x [0, H]``).
Map entry ``[i, j]`` describes the image point ``(x0 + (j + 0.5) * side / S, y0 + (i + 0.5) *
side / S)``, ``side = x1 - x0`` (``dff_jax.geometry.crop_to_image``).

The region:

* with ``--bbox`` (a face box, e.g. the box of the 68 landmarks, brows to chin): the square
  ``dff_jax.geometry.square_box(bbox, box_scale)`` of side ``box_scale * max(w, h)`` around the
  box centre. The default margin ``box_scale = 1.8`` makes the face fill the crop as it fills the
  training renders (outer-eye-corner distance ~0.32 of the side; that distance is ~0.57 of the
  landmark box's larger side);
* without ``--bbox``: the whole image, as the square of side ``max(W, H)`` around its centre
  (the short side padded).

Crop pixels outside the image are mid-grey (127.5, i.e. 0 after the encoder's normalisation).
Downscaling is antialiased (``dff_jax.sampling.crop_image`` with ``supersample = ceil(side /
S)``). ``--checkpoint`` is an inference bundle (``dff_jax.checkpoint.export_inference_bundle``) or
a training workdir; without it the shipped ``dff_jax/assets/dff_default`` is used. Bad input
(missing image, missing checkpoint, bad box): one line on stderr, exit status 1. Files appear
atomically (temporary file + rename).
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags

from experiments import cli

from dff_jax import descriptor_maps
from dff_jax.descriptor_maps import DEFAULT_BOX_SCALE
from dff_jax.file_io import error_line

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("image", None, "Image file.")
  flags.DEFINE_string("bbox", None, "Face box x0,y0,x1,y1 in pixels (default: whole image).")
  flags.DEFINE_float("box_scale", DEFAULT_BOX_SCALE, "Square crop side / face box side.")
  flags.DEFINE_string("checkpoint", None,
                      "DFF inference bundle or training workdir (default: shipped).")
  flags.DEFINE_string("out", None, "Output .npy (a .json is written beside it).")


def main(argv):
  cli.refuse_arguments(argv)
  try:
    if not FLAGS.out:
      raise ValueError("--out=FILE.npy is required")
    descriptor_maps.check_input_file(FLAGS.image, "image")
    bbox = descriptor_maps.parse_bbox(FLAGS.bbox)
    model = descriptor_maps.load_dff(FLAGS.checkpoint)
    document = descriptor_maps.extract_features(FLAGS.image, FLAGS.out, bbox,
                                                box_scale=FLAGS.box_scale, model=model)
  except (OSError, ValueError) as error:
    sys.exit("extract_features: error: " + error_line(error))
  print(json.dumps(dict(out=str(FLAGS.out), shape=document["shape"], box=document["box"])))


if __name__ == "__main__":
  define_flags()
  app.run(main)
