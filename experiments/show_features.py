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
Bad input: one line on stderr, exit status 1.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

from absl import app
from absl import flags
import numpy as np

from dff_jax import descriptor_maps

FLAGS = flags.FLAGS
PANEL_PAD = 4


def face_region_mask(box: np.ndarray, bbox: Optional[np.ndarray], size: int) -> np.ndarray:
  """``[size, size]`` bool: crop pixels whose centre lies inside the face box ``bbox`` (all
  pixels when ``bbox`` is None). ``box`` is the crop's square image region."""
  from dff_jax import geometry  # pylint: disable=g-import-not-at-top
  if bbox is None:
    return np.ones((size, size), bool)
  centres = np.asarray(geometry.crop_pixel_centres_in_image(np.asarray(box, np.float32), size))
  x, y = centres[..., 0], centres[..., 1]
  return (x >= bbox[0]) & (x <= bbox[2]) & (y >= bbox[1]) & (y <= bbox[3])


def grid_points(box: np.ndarray, bbox: Optional[np.ndarray], size: int, count: int,
                inset: float = 0.8) -> np.ndarray:
  """``[count ** 2, 2]`` crop-frame points (x, y) on a regular grid over the middle ``inset``
  fraction of the face box (of the middle ``inset / 1.8`` of the crop without a box)."""
  from dff_jax import geometry  # pylint: disable=g-import-not-at-top
  if bbox is None:
    half = 0.5 * size * inset / descriptor_maps.DEFAULT_BOX_SCALE
    region = np.asarray([size / 2 - half, size / 2 - half, size / 2 + half, size / 2 + half])
  else:
    corners = np.asarray(geometry.image_to_crop(
        np.asarray([[bbox[0], bbox[1]], [bbox[2], bbox[3]]], np.float32),
        np.asarray(box, np.float32), size))
    centre = corners.mean(axis=0)
    half = 0.5 * inset * (corners[1] - corners[0])
    region = np.concatenate([centre - half, centre + half])
  t = (np.arange(count) + 0.5) / count
  xs = region[0] + t * (region[2] - region[0])
  ys = region[1] + t * (region[3] - region[1])
  gx, gy = np.meshgrid(xs, ys, indexing="xy")
  return np.stack([gx.reshape(-1), gy.reshape(-1)], axis=-1).astype(np.float32)


def upscale_nearest(image: np.ndarray, size: int) -> np.ndarray:
  """``[S, S, C]`` -> ``[size, size, C]`` by nearest-neighbour (pixel centres kept aligned)."""
  source = image.shape[0]
  index = np.minimum(((np.arange(size) + 0.5) * source / size).astype(np.int64), source - 1)
  return image[index][:, index]


def show_features(image_path: str | os.PathLike, out_path: str | os.PathLike,
                  image_b_path: Optional[str | os.PathLike] = None,
                  bbox: Optional[np.ndarray] = None, bbox_b: Optional[np.ndarray] = None,
                  checkpoint: Optional[str] = None,
                  box_scale: float = descriptor_maps.DEFAULT_BOX_SCALE, panel_size: int = 256,
                  grid: int = 7, model: Optional[descriptor_maps.DFFModel] = None) -> dict:
  """Writes the figure described in the module docstring to ``out_path`` (PNG).

  Returns:
    ``{"out": path, "shape": [H, W, 3], "boxes": [...], "points_a_px": [N, 2],
    "matches_b_px": [N, 2], "similarity": [N]}`` (points in image pixels of A and B; the last
    three only with a second image).
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from data_pipeline import draw  # pylint: disable=g-import-not-at-top
  from dff_jax import geometry  # pylint: disable=g-import-not-at-top
  from dff_jax import matching  # pylint: disable=g-import-not-at-top

  paths = [descriptor_maps.check_input_file(image_path, "image")]
  if image_b_path:
    paths.append(descriptor_maps.check_input_file(image_b_path, "image_b"))
  if panel_size < 16 or grid < 1:
    raise ValueError(f"panel_size must be >= 16 and grid >= 1, got {panel_size}, {grid}")
  images = [descriptor_maps.read_image(p) for p in paths]
  bboxes = [bbox, bbox_b][:len(images)]
  boxes = [descriptor_maps.crop_box_for(im.shape, b, box_scale) for im, b in zip(images, bboxes)]
  if model is None:
    model = descriptor_maps.load_dff(checkpoint)
  size = model.image_size
  maps = [descriptor_maps.describe_region(model, im, box) for im, box in zip(images, boxes)]
  masks = [face_region_mask(box, b, size) for box, b in zip(boxes, bboxes)]
  colours = [upscale_nearest(matching.to_uint8(c), panel_size)
             for c in matching.pca_rgb(maps, masks)]
  photos = [np.clip(descriptor_maps.crop(im, box, panel_size) + 0.5, 0, 255).astype(np.uint8)
            for im, box in zip(images, boxes)]
  factor = panel_size / size
  document = dict(out=str(out_path), boxes=[[float(v) for v in box] for box in boxes],
                  checkpoint=model.source)

  if len(images) == 1:
    canvas = draw.grid([photos[0], colours[0]], columns=2, pad=PANEL_PAD)
  else:
    points_a = grid_points(boxes[0], bboxes[0], size, grid)
    query, _ = matching.sample_descriptors(jnp.asarray(maps[0]), jnp.asarray(points_a))
    matched, similarity = matching.match_descriptors(query, jnp.asarray(maps[1]),
                                                     jnp.asarray(masks[1]))
    matched, similarity = np.asarray(matched), np.asarray(similarity)
    canvas = draw.grid([photos[0], photos[1], colours[0], colours[1]], columns=2, pad=PANEL_PAD)
    offset_a = np.asarray([PANEL_PAD, PANEL_PAD], np.float64)
    offset_b = np.asarray([2 * PANEL_PAD + panel_size, PANEL_PAD], np.float64)
    row = np.asarray([0.0, PANEL_PAD + panel_size], np.float64)
    for k, (pa, pb) in enumerate(zip(points_a * factor, matched * factor)):
      colour = draw.colour_for(k)
      draw.draw_line(canvas, pa + offset_a, pb + offset_b, colour)
      for offset, point in ((offset_a, pa), (offset_b, pb), (offset_a + row, pa),
                            (offset_b + row, pb)):
        draw.draw_dot(canvas, point + offset, colour, radius=2.5)
    document.update(
        points_a_px=np.asarray(geometry.crop_to_image(points_a, boxes[0], size)).tolist(),
        matches_b_px=np.asarray(geometry.crop_to_image(matched, boxes[1], size)).tolist(),
        similarity=similarity.tolist())
  descriptor_maps.write_png(out_path, canvas)
  document["shape"] = list(canvas.shape)
  return document


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
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    if not FLAGS.out:
      raise ValueError("--out=FILE.png is required")
    descriptor_maps.check_input_file(FLAGS.image, "image")
    if FLAGS.image_b:
      descriptor_maps.check_input_file(FLAGS.image_b, "image_b")
    bbox, bbox_b = descriptor_maps.parse_bbox(FLAGS.bbox), descriptor_maps.parse_bbox(FLAGS.bbox_b)
    model = descriptor_maps.load_dff(FLAGS.checkpoint)
    document = show_features(FLAGS.image, FLAGS.out, FLAGS.image_b, bbox, bbox_b,
                             box_scale=FLAGS.box_scale, panel_size=FLAGS.panel_size,
                             grid=FLAGS.grid, model=model)
  except (OSError, ValueError) as error:
    from dff_jax.file_io import error_line  # pylint: disable=g-import-not-at-top
    sys.exit("show_features: error: " + error_line(error))
  print(json.dumps(dict(out=document["out"], shape=document["shape"])))


if __name__ == "__main__":
  define_flags()
  app.run(main)
