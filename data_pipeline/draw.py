"""Tiny NumPy drawing helpers for debug figures (no image libraries needed).

Images are ``[H, W, 3]`` uint8 and are modified in place; points are ``(x, y)`` pixels with
pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)`` (DESIGN.md section 3).
"""

from __future__ import annotations

import numpy as np


def draw_dot(image: np.ndarray, point_xy, colour, radius: float = 1.5) -> None:
  """Fills a disc of ``radius`` pixels around ``point_xy``."""
  h, w, _ = image.shape
  x, y = float(point_xy[0]), float(point_xy[1])
  if not (np.isfinite(x) and np.isfinite(y)):
    return
  j0, j1 = max(int(np.floor(x - radius)), 0), min(int(np.ceil(x + radius)), w)
  i0, i1 = max(int(np.floor(y - radius)), 0), min(int(np.ceil(y + radius)), h)
  if j0 >= j1 or i0 >= i1:
    return
  yy, xx = np.mgrid[i0:i1, j0:j1]
  inside = (xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2 <= radius * radius
  image[i0:i1, j0:j1][inside] = colour


def draw_line(image: np.ndarray, start_xy, end_xy, colour) -> None:
  """Draws a 1-pixel line by dense sampling (clipped to the image)."""
  h, w, _ = image.shape
  start = np.asarray(start_xy, np.float64)
  end = np.asarray(end_xy, np.float64)
  if not (np.isfinite(start).all() and np.isfinite(end).all()):
    return
  steps = int(np.ceil(np.abs(end - start).max() * 1.5)) + 1
  t = np.linspace(0.0, 1.0, steps)[:, None]
  pts = start + t * (end - start)
  j = np.floor(pts[:, 0]).astype(np.int64)
  i = np.floor(pts[:, 1]).astype(np.int64)
  ok = (j >= 0) & (j < w) & (i >= 0) & (i < h)
  image[i[ok], j[ok]] = colour


def colour_for(k: int) -> np.ndarray:
  """A bright, distinct-ish RGB colour for index ``k``."""
  hue = (k * 0.618033988749895) % 1.0
  rgb = np.clip(np.abs(np.mod(hue * 6 + np.array([0, 4, 2]), 6) - 3) - 1, 0, 1)
  return (rgb * 200 + 55).astype(np.uint8)


def grid(images, columns: int, pad: int = 2, pad_value: int = 255) -> np.ndarray:
  """Tiles equally sized ``[H, W, 3]`` uint8 images into rows of ``columns``."""
  images = list(images)
  h, w, c = images[0].shape
  rows = (len(images) + columns - 1) // columns
  out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), pad_value, np.uint8)
  for n, im in enumerate(images):
    r, col = divmod(n, columns)
    out[pad + r * (h + pad):pad + r * (h + pad) + h,
        pad + col * (w + pad):pad + col * (w + pad) + w] = im
  return out
