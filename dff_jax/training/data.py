"""The encoder trainer's data: the patch loss's segmentation table and the training pairs
(synthetic, or mixed with real-face pairs) as per-process numpy batches through grain.

The data stream is a pure function of ``(config.data.seed, step)``: element ``i`` of the global
batch of step ``t`` is sample ``(t * global_batch + i) mod len(source)``, and process ``p`` of
``n`` reads rows ``[p * global_batch / n, (p + 1) * global_batch / n)`` of it, so a resumed run
sees exactly the batches it would have seen. ``config.num_workers > 0`` renders in grain worker
processes. Importing this module imports neither the data pipeline nor grain (they load when
used).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional

import jax
import ml_collections
import numpy as np


def segmentation_table(config: ml_collections.ConfigDict,
                       cache_dir: Optional[str | Path] = None) -> np.ndarray:
  """``[S, V]`` int32 patch id of every vertex of the data's face model in each segmentation.

  Computed by ``random_segmentations`` (farthest-point seeds + graph Voronoi) and cached as
  ``cache_dir/segmentations_<model>_S<S>_P<P>_seed<seed>.npy`` when ``cache_dir`` is given.
  Time: S = 100, P = 500 on the default model's 16,434 vertices takes ~7 s on one CPU core
  (S = 4, P = 16: 0.1 s); the cache makes restarts free.
  """
  num_segmentations = int(config.loss.num_segmentations)
  num_patches = int(config.loss.num_patches)
  seed = int(config.loss.segmentation_seed)
  model_name = Path(str(config.data.face_model)).stem
  path = None
  if cache_dir is not None:
    path = Path(cache_dir) / (f"segmentations_{model_name}_S{num_segmentations}_P{num_patches}"
                              f"_seed{seed}.npy")
    if path.exists():
      try:
        table = np.load(path)
        if table.shape[0] == num_segmentations:
          return table.astype(np.int32)
      except (OSError, ValueError):
        pass  # A truncated cache file: recompute.
  from dff_jax.face_model import segmentation as segmentation_lib  # pylint: disable=g-import-not-at-top
  model = _face_model(str(config.data.face_model))
  start = time.time()
  table = np.asarray(segmentation_lib.random_segmentations(
      model, num_segmentations, num_patches, seed), np.int32)
  logging.info("random_segmentations(S=%d, P=%d) on %d vertices took %.1f s", num_segmentations,
               num_patches, table.shape[1], time.time() - start)
  if path is not None and jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, table)
    tmp.replace(path)
  return table


@functools.lru_cache(maxsize=4)
def _face_model(spec: str):
  from dff_jax.face_model import loaders  # pylint: disable=g-import-not-at-top
  return loaders.load_face_model(spec)


# ----------------------------------------------------------------------------------------------
# Data: PairSource -> grain -> per-process numpy batches
# ----------------------------------------------------------------------------------------------


def make_pair_source(data_config: Any, seed: Optional[int] = None):
  """``data_pipeline.pairs.PairSource`` for ``config.data`` (with ``seed`` overriding its seed)."""
  from data_pipeline.pairs import PairSource  # pylint: disable=g-import-not-at-top
  from data_pipeline.config import pipeline_config_from_dict  # pylint: disable=g-import-not-at-top
  values = data_config.to_dict() if hasattr(data_config, "to_dict") else dict(data_config)
  if seed is not None:
    values["seed"] = int(seed)
  return PairSource(pipeline_config_from_dict(values))


def make_training_source(config: ml_collections.ConfigDict, seed: Optional[int] = None):
  """The training pairs: synthetic (:func:`make_pair_source`) or, when ``config.real.fraction``
  > 0, a :class:`data_pipeline.faces.Mixture` of real-face pairs
  (``data_pipeline.real_views.RealPairSource`` over the fit cache ``config.real.fits``, rendered
  with ``config.data``) and synthetic pairs in the ratio ``fraction : 1 - fraction``."""
  synthetic = make_pair_source(config.data, seed)
  fraction = float(config.real.fraction) if "real" in config else 0.0
  if fraction <= 0:
    return synthetic
  from data_pipeline import faces as faces_lib  # pylint: disable=g-import-not-at-top
  from data_pipeline import real_faces  # pylint: disable=g-import-not-at-top
  from data_pipeline import real_views  # pylint: disable=g-import-not-at-top
  real = real_views.RealPairSource(real_faces.RealFacesConfig(
      fits=str(config.real.fits), pipeline=synthetic.config,
      pair_kinds=tuple(config.real.pair_kinds), lifts=str(config.real.get("lifts", "") or "")))
  return faces_lib.Mixture([real, synthetic], [fraction, 1.0 - fraction],
                           seed=synthetic.config.seed, num_examples=len(synthetic))


def select_fields(sample: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """The fields the steps use, views 0 and 1: images ``[2, H, W, 3]`` uint8, vertex_ids
  ``[2, H, W]`` int32, points_a_px / points_b_px ``[K, 2]`` float32, valid ``[K]`` bool."""
  return {
      "images": np.asarray(sample["images"][:2], np.uint8),
      "vertex_ids": np.asarray(sample["vertex_ids"][:2], np.int32),
      "points_a_px": np.asarray(sample["points_a_px"], np.float32),
      "points_b_px": np.asarray(sample["points_b_px"], np.float32),
      "valid": np.asarray(sample["valid"], bool),
  }


@dataclasses.dataclass(frozen=True)
class StepIndexToSample:
  """grain map: local element ``j`` -> sample of global index
  ``(step * global_batch + process_index * local_batch + i) mod len(source)``,
  ``(step, i) = divmod(j, local_batch)``. Picklable (grain workers)."""
  source: Any
  global_batch: int
  local_batch: int
  process_index: int

  def __call__(self, j: int) -> Dict[str, np.ndarray]:
    step, i = divmod(int(j), self.local_batch)
    index = step * self.global_batch + self.process_index * self.local_batch + i
    return select_fields(self.source[index % len(self.source)])


def _stack(samples):
  return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


def make_train_iterator(config: ml_collections.ConfigDict, start_step: int,
                        source: Any = None) -> Iterator[Dict[str, np.ndarray]]:
  """This process's batches for steps ``start_step, ..., num_steps - 1`` (grain).

  Each batch is a dict of ``[global_batch / process_count, ...]`` numpy arrays (see
  :func:`select_fields`); a pure function of ``(config.data.seed, step, process_index)``.
  """
  import grain  # pylint: disable=g-import-not-at-top
  process_count, process_index = jax.process_count(), jax.process_index()
  global_batch = int(config.global_batch_size)
  if global_batch % process_count:
    raise ValueError(f"global_batch_size={global_batch} must divide by the number of processes "
                     f"({process_count}).")
  local_batch = global_batch // process_count
  source = make_training_source(config) if source is None else source
  dataset = grain.MapDataset.range(start_step * local_batch, int(config.num_steps) * local_batch)
  dataset = dataset.map(StepIndexToSample(source, global_batch, local_batch, process_index))
  dataset = dataset.batch(local_batch, drop_remainder=True, batch_fn=_stack)
  iterable = dataset.to_iter_dataset()
  if int(config.num_workers) > 0:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():  # grain reads its absl flags; outside an absl app (tests).
      flags.FLAGS.mark_as_parsed()
    iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=int(config.num_workers), per_worker_buffer_size=2))
  return iter(iterable)


def load_eval_batches(config: ml_collections.ConfigDict) -> list:
  """The fixed held-out pairs (seed ``config.eval.seed``, samples ``0 .. num_pairs - 1``) as a
  list of this process's numpy batches of ``eval.batch_size / process_count`` rows."""
  if int(config.eval.seed) == int(config.data.seed):
    raise ValueError("config.eval.seed must differ from config.data.seed (held-out pairs).")
  batch_size, num_pairs = int(config.eval.batch_size), int(config.eval.num_pairs)
  process_count, process_index = jax.process_count(), jax.process_index()
  if num_pairs % batch_size or batch_size % process_count:
    raise ValueError(f"eval.num_pairs={num_pairs} must be a multiple of eval.batch_size="
                     f"{batch_size}, itself a multiple of the process count {process_count}.")
  source = make_pair_source(config.data, seed=config.eval.seed)
  local = batch_size // process_count
  batches = []
  for start in range(0, num_pairs, batch_size):
    first = start + process_index * local
    batches.append(_stack([select_fields(source[i]) for i in range(first, first + local)]))
  return batches
