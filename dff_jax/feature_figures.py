r"""The figure of ``python -m experiments.show_features``: DFF descriptors as colours, and
descriptor matches between two face images (:func:`show_features`).

One image: ``[crop | descriptor colours]``. Two images: top row ``[crop A | crop B]`` with lines
from a grid of face points of A (``grid`` x ``grid`` points over the middle of A's face
box) to their best descriptor match in B (largest cosine similarity over B's face box; a dot of
the same colour marks both ends), bottom row the descriptor colours of A and B.

Descriptor colours: the first three principal components of the descriptors as R, G, B. The PCA
is fitted on the pixels inside the face boxes (the whole crop without a box) of both images
together, so the same colour means a similar descriptor in both; each component is stretched
between its 1st and 99th percentile over those pixels. A well-trained DFF shows smooth colour
gradients that follow the face (left/right, up/down, nose/eyes/mouth) and the same colours at the
same face parts in both views.

Crops are made as in :mod:`dff_jax.descriptor_maps` (square box ``box_scale`` times the face
box; the descriptors at the encoder's training image size, shown upscaled to ``panel_size``).
Image points are ``(x, y)`` pixels, pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from dff_jax import descriptor_maps

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
