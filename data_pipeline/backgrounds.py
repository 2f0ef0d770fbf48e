"""Random textured backgrounds (NumPy only).

Backgrounds are display-space RGB float32 in [0, 1], ``[H, W, 3]``: a mix of a colour gradient,
multi-scale smooth value noise, stripes and random rectangles / discs, so the encoder cannot use a
plain background to find the face.
"""

from __future__ import annotations

import functools

import numpy as np


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int,
                 channels: int = 3) -> np.ndarray:
  """Bilinearly upsampled uniform noise on a ``(cells + 1)^2`` grid; ``[H, W, channels]`` in
  [0, 1]."""
  grid = rng.random((cells + 1, cells + 1, channels)).astype(np.float32)
  y = (np.arange(height) + 0.5) / height * cells
  x = (np.arange(width) + 0.5) / width * cells
  y0 = np.minimum(y.astype(np.int64), cells - 1)
  x0 = np.minimum(x.astype(np.int64), cells - 1)
  fy = (y - y0).astype(np.float32)[:, None, None]
  fx = (x - x0).astype(np.float32)[None, :, None]
  rows = grid[:, x0] * (1 - fx) + grid[:, x0 + 1] * fx  # [cells + 1, W, C]
  return rows[y0] * (1 - fy) + rows[y0 + 1] * fy

@functools.lru_cache(maxsize=8)
def _unit_grid(height: int, width: int):
  """Read-only ``(yy, xx)`` ``[H, W]`` float32 pixel-centre coordinates in [0, 1]."""
  yy, xx = np.meshgrid((np.arange(height, dtype=np.float32) + 0.5) / height,
                       (np.arange(width, dtype=np.float32) + 0.5) / width, indexing="ij")
  yy.flags.writeable = False
  xx.flags.writeable = False
  return yy, xx


def random_background(rng: np.random.Generator, height: int, width: int,
                      kind: str = "random") -> np.ndarray:
  """A random background ``[H, W, 3]`` float32 in [0, 1].

  Args:
    kind: ``"random"`` (textured) or ``"flat"`` (one random colour).
  """
  base = rng.random(3)
  if kind == "flat":
    return np.broadcast_to(base, (height, width, 3)).astype(np.float32).copy()
  yy, xx = _unit_grid(height, width)
  angle = rng.uniform(0, 2 * np.pi)
  ramp = (np.float32(np.cos(angle)) * xx + np.float32(np.sin(angle)) * yy)[..., None]
  base = base.astype(np.float32)
  other = rng.random(3).astype(np.float32)
  image = base + (other - base) * ramp
  image = 0.5 * image + 0.5 * smooth_noise(rng, height, width, int(rng.integers(2, 6)))
  detail = smooth_noise(rng, height, width, int(rng.integers(8, 24)), channels=1)
  image *= 0.75 + 0.5 * detail
  if rng.random() < 0.4:  # stripes
    freq = rng.uniform(4, 20)
    a = rng.uniform(0, 2 * np.pi)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(a) * xx + np.sin(a) * yy))
    stripes = 0.35 * stripes[..., None]
    image = image * (1 - stripes) + stripes * rng.random(3).astype(np.float32)
  for _ in range(int(rng.integers(0, 5))):  # shapes
    cx, cy, r = rng.random(), rng.random(), rng.uniform(0.05, 0.3)
    colour = rng.random(3)
    if rng.random() < 0.5:
      inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
    else:
      inside = (np.abs(xx - cx) < r) & (np.abs(yy - cy) < rng.uniform(0.05, 0.3))
    image[inside] = 0.3 * image[inside] + 0.7 * colour
  return np.clip(image, 0, 1).astype(np.float32)
