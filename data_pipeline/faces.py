"""Single annotated faces for training and evaluating alignment, from the pair pipeline.

Each example is one rendered view with its ground truth (68 landmarks, visibility, weak-perspective
pose, 3DMM coefficients) and a face box jittered the way a face detector's box would be (scale,
shift, aspect) around the landmarks' bounding box. Example ``i`` is view ``i % V`` of pair sample
``i // V`` of the pipeline (:func:`data_pipeline.pairs.generate_sample`), so it is a pure function
of ``(config.seed, i)``. NumPy only.

Frames: image points ``(x, y)`` in pixels, pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``;
boxes ``(x0, y0, x1, y1)`` in the same frame; pose as in :mod:`dff_jax.geometry`.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import numpy as np

from dff_jax.geometry import landmark_box  # the face box of a face's points, as everywhere

from data_pipeline import pairs
from data_pipeline.config import PipelineConfig

POSE_KEYS = ("scale", "pitch_rad", "yaw_rad", "roll_rad")


@dataclasses.dataclass(frozen=True)
class BoxJitter:
  """Face-box perturbation around the landmark bounding box (fractions of the box side).

  Attributes:
    scale: the side is multiplied by ``exp(U(-scale, scale))``.
    shift: the centre moves by ``U(-shift, shift) * side`` in x and y.
    aspect: width and height are scaled by ``exp(+-U(-aspect, aspect) / 2)``.
  """
  scale: float = 0.1
  shift: float = 0.06
  aspect: float = 0.1


NO_JITTER = BoxJitter(0.0, 0.0, 0.0)


def jitter_box(rng: np.random.Generator, box_xyxy: np.ndarray, jitter: BoxJitter) -> np.ndarray:
  """A detector-like box: ``box_xyxy [4]`` rescaled, shifted and stretched (see BoxJitter)."""
  centre = (box_xyxy[:2] + box_xyxy[2:]) / 2
  size = box_xyxy[2:] - box_xyxy[:2]
  side = np.sqrt(size[0] * size[1])
  size = size * np.exp(rng.uniform(-jitter.scale, jitter.scale))
  stretch = np.exp(rng.uniform(-jitter.aspect, jitter.aspect) / 2)
  size = size * np.array([stretch, 1 / stretch])
  centre = centre + rng.uniform(-jitter.shift, jitter.shift, size=2) * side
  return np.concatenate([centre - size / 2, centre + size / 2]).astype(np.float32)


class FaceSource:
  """Random access over single annotated faces: ``source[i]`` is a dict of NumPy arrays.

  Keys: ``image [H, W, 3] uint8``, ``box [4] float32`` (jittered detector-like box),
  ``landmarks_px [68, 2] float32``, ``landmarks_visible [68] bool``, ``pose [6] float32``
  ``(scale px/mm, pitch, yaw, roll (rad), tx, ty (px))``, ``shape_coefficients [Ki]``,
  ``expression_coefficients [Ke]``, ``index`` (the example index), ``model_landmarks [] bool``
  (True: the labels are the face model's own landmark vertices projected, see
  :func:`dff_jax.alignment.cascade.model_labels_in_convention`).
  """

  def __init__(self, config: PipelineConfig, jitter: BoxJitter = BoxJitter(),
               num_examples: Optional[int] = None):
    self.config = config
    self.jitter = jitter
    self._pairs = pairs.PairSource(config)
    self._last = (-1, None)  # consecutive views of one pair render it once
    self._num_examples = (config.num_examples * config.num_views if num_examples is None
                          else int(num_examples))

  def __len__(self) -> int:
    return self._num_examples

  def __getitem__(self, i) -> Dict[str, np.ndarray]:
    i = pairs.checked_index(i, len(self), "FaceSource")
    views = self.config.num_views
    if self._last[0] != i // views:
      self._last = (i // views, self._pairs[i // views])
    sample = self._last[1]
    view = i % views
    landmarks = sample["landmarks_px"][view]
    rng = np.random.default_rng((self.config.seed, i, 7))
    pose = np.concatenate([[sample[key][view] for key in POSE_KEYS],
                           sample["translation_px"][view]]).astype(np.float32)
    return dict(
        image=sample["images"][view],
        box=jitter_box(rng, landmark_box(landmarks), self.jitter),
        landmarks_px=landmarks.astype(np.float32),
        landmarks_visible=sample["landmarks_visible"][view],
        pose=pose,
        shape_coefficients=sample["shape_coefficients"],
        expression_coefficients=sample["expression_coefficients"],
        index=np.int64(i),
        model_landmarks=np.bool_(True),
    )


def stack(examples) -> Dict[str, np.ndarray]:
  """Stacks a list of :class:`FaceSource` examples into a batch (leading axis B)."""
  return {key: np.stack([example[key] for example in examples]) for key in examples[0]}


class Mixture:
  """Random access over a weighted mixture of sources with the same keys: example ``i`` comes
  from source ``k`` drawn with ``np.random.default_rng((seed, i, 17))`` and probabilities
  ``weights / sum(weights)``, at that source's index ``i mod len(source)`` (a pure function of
  ``i``). Each example gets ``mixture_source [ ] int32 = k``."""

  def __init__(self, sources, weights, seed: int, num_examples: int = 1_000_000):
    weights = np.asarray(weights, np.float64)
    if len(sources) != len(weights) or np.any(weights < 0) or weights.sum() <= 0:
      raise ValueError(f"need one non-negative weight per source (not all 0), got {weights}")
    self.sources = list(sources)
    self.probabilities = weights / weights.sum()
    self.seed = int(seed)
    self._num_examples = int(num_examples)

  def __len__(self) -> int:
    return self._num_examples

  def __getitem__(self, i) -> Dict[str, np.ndarray]:
    i = pairs.checked_index(i, len(self), "Mixture")
    k = int(np.random.default_rng((self.seed, i, 17)).choice(len(self.sources),
                                                              p=self.probabilities))
    example = dict(self.sources[k][i % len(self.sources[k])])
    example["mixture_source"] = np.int32(k)
    return example
