"""Photometric augmentation and occluders (NumPy only).

All functions take and return display-space RGB float32 images ``[H, W, 3]`` in [0, 1] and a
``np.random.Generator``. They change pixels only: the geometry maps (vertex ids, masks,
correspondences) of a sample describe the face surface, also under an occluder (the occluder is
an image-space nuisance, like hair or a hand in a photo).
"""

from __future__ import annotations

import numpy as np

from data_pipeline.backgrounds import smooth_noise


def add_occluder(rng: np.random.Generator, image: np.ndarray, centre_px: np.ndarray,
                 size_px: float) -> np.ndarray:
  """Pastes a random textured disc, bar or rectangle near ``centre_px (x, y)`` of extent about
  ``size_px`` pixels. Returns a new ``[H, W, 3]`` float32 image."""
  h, w, _ = image.shape
  yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
  cx, cy = centre_px + rng.normal(scale=0.35 * size_px, size=2)
  kind = rng.integers(3)
  if kind == 0:
    r = rng.uniform(0.15, 0.35) * size_px
    inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
  elif kind == 1:
    a = rng.uniform(0, np.pi)
    d = np.abs(np.cos(a) * (yy - cy) - np.sin(a) * (xx - cx))
    inside = d < rng.uniform(0.04, 0.12) * size_px
  else:
    hw, hh = rng.uniform(0.1, 0.3, size=2) * size_px
    inside = (np.abs(xx - cx) < hw) & (np.abs(yy - cy) < hh)
  texture = rng.random(3) * (0.6 + 0.4 * smooth_noise(rng, h, w, int(rng.integers(3, 10)), 1))
  out = image.copy()
  out[inside] = texture[inside]
  return out


def soften_silhouette(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Anti-aliases the face outline: pixels whose 4-neighbourhood crosses ``mask`` (``[H, W]``
  bool) get the 3x3 box average. Returns a new ``[H, W, 3]`` float32 image."""
  m = mask
  edge = np.zeros_like(m)
  edge[1:] |= m[1:] != m[:-1]
  edge[:-1] |= m[1:] != m[:-1]
  edge[:, 1:] |= m[:, 1:] != m[:, :-1]
  edge[:, :-1] |= m[:, 1:] != m[:, :-1]
  padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
  rows = padded[:-2] + padded[1:-1] + padded[2:]
  box = (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) * np.float32(1 / 9)
  return np.where(edge[..., None], box, image).astype(np.float32, copy=False)


def colour_jitter(rng: np.random.Generator, image: np.ndarray, strength: float) -> np.ndarray:
  """Brightness, contrast, saturation and per-channel gain jitter of relative size
  ``strength``; grayscale with probability 0.1."""
  gain = 1 + strength * rng.uniform(-1, 1, size=3)
  offset = strength * rng.uniform(-0.5, 0.5)
  contrast = 1 + strength * rng.uniform(-1, 1)
  saturation = 0.0 if rng.random() < 0.1 else 1 + strength * rng.uniform(-1, 1)
  # out = contrast * (gain * image + offset - mean) + mean, then saturation about the grey level.
  mean = float(np.mean(image.reshape(-1, 3), axis=0) @ gain) / 3 + offset
  scale = (contrast * gain).astype(np.float32)
  shift = np.float32(contrast * offset + (1 - contrast) * mean)
  out = image * scale + shift
  gray = (out[..., 0:1] + out[..., 1:2] + out[..., 2:3]) * np.float32(1 / 3)
  out = gray + (out - gray) * np.float32(saturation)
  return np.clip(out, 0, 1).astype(np.float32, copy=False)


def gaussian_blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
  """Separable Gaussian blur (edge-replicated) of ``[H, W, C]``."""
  radius = max(1, int(np.ceil(2.5 * sigma_px)))
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_px) ** 2)
  taps /= taps.sum()
  padded = np.pad(image, ((radius, radius), (0, 0), (0, 0)), mode="edge")
  out = sum(t * padded[k:k + image.shape[0]] for k, t in enumerate(taps))
  padded = np.pad(out, ((0, 0), (radius, radius), (0, 0)), mode="edge")
  out = sum(t * padded[:, k:k + image.shape[1]] for k, t in enumerate(taps))
  return out.astype(np.float32)


def photometric_augment(rng: np.random.Generator, image: np.ndarray, colour_strength: float,
                        blur_probability: float, noise_std: float) -> np.ndarray:
  """Colour jitter, optional blur (sigma 0.4-1.2 px) and Gaussian noise (``noise_std`` in uint8
  levels, scaled by a random factor). Returns float32 [0, 1]."""
  out = colour_jitter(rng, image, colour_strength) if colour_strength > 0 else image
  if rng.random() < blur_probability:
    out = gaussian_blur(out, rng.uniform(0.4, 1.2))
  if noise_std > 0:
    sigma = np.float32(noise_std / 255.0 * rng.uniform(0, 1.5))
    out = out + sigma * rng.standard_normal(size=out.shape, dtype=np.float32)
  return np.clip(out, 0, 1).astype(np.float32, copy=False)
