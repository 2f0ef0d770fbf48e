"""Draws a grid of generated pairs: view A | view B with correspondence lines and landmarks.

  python -m experiments.show_pairs --out=/tmp/pairs.png --num_pairs=6 --num_lines=24

Each row is one sample: views 0 and 1 side by side; a coloured line joins the same surface point
in both views (valid correspondences only), landmarks are dots (green visible, red hidden).
"""

from __future__ import annotations

from absl import app, flags
from experiments import cli
import imageio.v3 as iio
import numpy as np

from data_pipeline import draw
from data_pipeline.config import pipeline_config_from_dict
from data_pipeline.pairs import PairSource

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "pairs.png", "output PNG")
flags.DEFINE_integer("num_pairs", 6, "rows")
flags.DEFINE_integer("num_lines", 20, "correspondence lines per pair")
flags.DEFINE_integer("seed", 0, "pipeline seed")
flags.DEFINE_integer("image_size", 128, "H = W")
flags.DEFINE_integer("upscale", 2, "nearest-neighbour upscaling of the images before drawing")
flags.DEFINE_string("face_model", "default", "default | ict | sfm | PATH")
flags.DEFINE_integer("start", 0, "first sample index")


def render_pair(sample, num_lines: int, upscale: int) -> np.ndarray:
  """``[H*u, 2*W*u, 3]`` uint8: views 0 and 1 side by side with lines and landmarks."""
  a = np.repeat(np.repeat(sample["images"][0], upscale, 0), upscale, 1)
  b = np.repeat(np.repeat(sample["images"][1], upscale, 0), upscale, 1)
  w = a.shape[1]
  canvas = np.concatenate([a, b], axis=1)
  for v, offset in ((0, 0.0), (1, float(w))):
    for p, vis in zip(sample["landmarks_px"][v], sample["landmarks_visible"][v]):
      colour = np.array([0, 255, 0] if vis else [255, 0, 0], np.uint8)
      draw.draw_dot(canvas, (p[0] * upscale + offset, p[1] * upscale), colour, radius=1.2)
  valid = np.nonzero(sample["valid"])[0][:num_lines]
  for n, k in enumerate(valid):
    pa = sample["points_a_px"][k] * upscale
    pb = sample["points_b_px"][k] * upscale + [w, 0]
    colour = draw.colour_for(n)
    draw.draw_line(canvas, pa, pb, colour)
    draw.draw_dot(canvas, pa, colour, radius=2.0)
    draw.draw_dot(canvas, pb, colour, radius=2.0)
  return canvas


def main(argv):
  cli.refuse_arguments(argv)
  config = pipeline_config_from_dict(seed=FLAGS.seed, image_size=FLAGS.image_size,
                                     face_model=FLAGS.face_model)
  source = PairSource(config)
  rows = [render_pair(source[FLAGS.start + i], FLAGS.num_lines, FLAGS.upscale)
          for i in range(FLAGS.num_pairs)]
  iio.imwrite(FLAGS.out, draw.grid(rows, columns=1))
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
