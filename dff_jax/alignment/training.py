"""Training and evaluating the alignment cascade on synthetic faces.

``train_alignment(config, workdir)`` renders the training faces (:class:`data_pipeline.faces.
FaceSource`: unseen identities, random expression, full yaw range, detector-like jittered boxes),
computes their descriptor maps once (kept in memory as float16), learns the regressors stage by
stage (:func:`dff_jax.alignment.regression.fit_cascade`), evaluates on held-out faces and writes
``workdir/cascade_<features>.npz`` and ``workdir/summary_<features>.json``.

Frames: image points ``(x, y)`` in pixels; the cascade's crop frame is defined by the square box
``geometry.square_box(box, box_scale)`` resampled to ``crop_size`` pixels (see
:mod:`dff_jax.alignment.cascade`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from data_pipeline import faces as faces_lib
from data_pipeline.config import pipeline_config_from_dict
from dff_jax import descriptor_fields
from dff_jax import geometry
from dff_jax import metrics
from dff_jax import sampling
from dff_jax.alignment import cascade
from dff_jax.alignment import features as features_lib
from dff_jax.alignment import io as cascade_io
from dff_jax.alignment import regression
from dff_jax.face_model import load_face_model

Array = Any


def pose_to_crop(pose: np.ndarray, crop_box: np.ndarray, crop_size: int) -> np.ndarray:
  """Image-frame pose ``[..., 6]`` -> crop-frame pose (scale and translation change)."""
  pose = np.array(pose, np.float32)
  side = crop_box[..., 2] - crop_box[..., 0]
  pose[..., 0] = pose[..., 0] * crop_size / side
  pose[..., 4:6] = geometry.image_to_crop(pose[..., None, 4:6], crop_box, crop_size)[..., 0, :]
  return pose


def crop_boxes_for(boxes: np.ndarray, config: cascade.CascadeConfig) -> np.ndarray:
  """Face boxes ``[..., 4]`` -> the square crop boxes the cascade works in."""
  return np.asarray(geometry.square_box(np.asarray(boxes, np.float32), config.box_scale),
                    np.float32)


def make_crop_and_describe(describer: features_lib.Describer, crop_size: int) -> Callable:
  """A jitted ``(images [B, H, W, 3] uint8, crop_boxes [B, 4]) -> descriptor fields [B, ...]``
  (dense maps ``[B, S, S, D]`` or point fields, :mod:`dff_jax.descriptor_fields`)."""
  @jax.jit
  def run(images, crop_boxes):
    crops = jax.vmap(lambda image, box: sampling.crop_image(
        image.astype(jnp.float32), box, crop_size))(images, crop_boxes)
    return describer(crops)
  return run


def render_faces(source: faces_lib.FaceSource, count: int,
                 log: Callable[[str], None] = print) -> Dict[str, np.ndarray]:
  """The first ``count`` faces of ``source`` stacked into arrays (see FaceSource keys)."""
  start = time.time()
  examples = []
  for i in range(count):
    examples.append(source[i])
    if (i + 1) % 500 == 0:
      log(f"rendered {i + 1}/{count} faces ({(i + 1) / (time.time() - start):.1f} faces/s)")
  return faces_lib.stack(examples)


def describe_all(describe: Callable, faces: Dict[str, np.ndarray], crop_boxes: np.ndarray,
                 batch_size: int) -> Any:
  """Descriptor fields of all faces in host memory: leaves ``[N, ...]``, maps and pyramid
  levels float16 (a dense ``[N, S, S, D]`` array, or a point field whose head stays float32)."""
  count = len(crop_boxes)
  out = None
  for start in range(0, count, batch_size):
    stop = min(start + batch_size, count)
    images = _pad(faces["image"][start:stop], batch_size)
    boxes = _pad(crop_boxes[start:stop], batch_size)
    fields = descriptor_fields.map_faces(lambda x: np.asarray(x)[:stop - start],
                                         describe(images, boxes))
    if out is None:
      out = descriptor_fields.map_faces(
          lambda x: np.zeros((count,) + x.shape[1:], _host_dtype(x)), fields)
    for target, part in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(fields)):
      target[start:stop] = part
  return out


def _host_dtype(leaf: np.ndarray) -> Any:
  """float16 for spatial maps ``[N, h, w, C]``, float32 for the rest (a point head)."""
  return np.float16 if leaf.ndim == 4 else np.float32


def _pad(array: Any, size: int) -> Any:
  """Pads the leading axis of an array (or of every leaf of a field) to ``size`` by repeating
  the last row (static batch shapes)."""
  def pad(x):
    if len(x) == size:
      return x
    return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])
  return descriptor_fields.map_faces(pad, array)


def _device(fields: Any) -> Any:
  """Host fields -> float32 device arrays."""
  return descriptor_fields.map_faces(lambda x: jnp.asarray(x, jnp.float32), fields)


def _take(fields: Any, start: int, stop: int) -> Any:
  return descriptor_fields.map_faces(lambda x: x[start:stop], fields)


def batches_from_images(describe: Callable, faces: Dict[str, np.ndarray], crop_boxes: np.ndarray,
                        landmarks_crop: np.ndarray, pose_crop: np.ndarray, batch_size: int
                        ) -> Callable[[], Iterable[regression.Batch]]:
  """The ``batches`` callable of :func:`regression.fit_cascade` describing each batch anew on
  every call (host memory holds only the images, not ``N x S x S x D`` maps)."""
  def batches():
    for start in range(0, len(crop_boxes), batch_size):
      stop = min(start + batch_size, len(crop_boxes))
      weight = np.zeros(batch_size, np.float32)
      weight[:stop - start] = 1.0
      maps = describe(_pad(faces["image"][start:stop], batch_size),
                      _pad(crop_boxes[start:stop], batch_size))
      yield (maps, jnp.asarray(_pad(landmarks_crop[start:stop], batch_size)),
             jnp.asarray(_pad(pose_crop[start:stop], batch_size)), weight)
  return batches


def batches_from_maps(maps: Any, landmarks_crop: np.ndarray, pose_crop: np.ndarray,
                      batch_size: int) -> Callable[[], Iterable[regression.Batch]]:
  """The ``batches`` callable of :func:`regression.fit_cascade` over in-memory fields
  (:func:`describe_all`)."""
  count = descriptor_fields.num_faces(maps)

  def batches():
    for start in range(0, count, batch_size):
      stop = min(start + batch_size, count)
      weight = np.zeros(batch_size, np.float32)
      weight[:stop - start] = 1.0
      yield (_device(_pad(_take(maps, start, stop), batch_size)),
             jnp.asarray(_pad(landmarks_crop[start:stop], batch_size)),
             jnp.asarray(_pad(pose_crop[start:stop], batch_size)), weight)
  return batches


def run_on_maps(alignment_model: cascade.AlignmentModel, params: cascade.CascadeParams,
                config: cascade.CascadeConfig, maps: Any,
                batch_size: int) -> cascade.AlignmentState:
  """The cascade on in-memory fields (leaves ``[N, ...]``, :func:`describe_all`); returns
  stacked crop-frame states."""
  run = jax.jit(cascade.align_crops, static_argnames=("config",))
  states = []
  count = descriptor_fields.num_faces(maps)
  for start in range(0, count, batch_size):
    stop = min(start + batch_size, count)
    state = run(alignment_model, params, _device(_pad(_take(maps, start, stop), batch_size)),
                config)
    states.append(jax.tree_util.tree_map(lambda x: np.asarray(x)[:stop - start], state))
  return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *states)


def landmark_errors(predicted_px: np.ndarray, faces: Dict[str, np.ndarray]) -> np.ndarray:
  """Per-face NME ``[N]`` normalised by sqrt(w * h) of the true landmarks' box (all 68)."""
  return np.asarray(metrics.nme(predicted_px, faces["landmarks_px"], "bbox"))


def summarise(errors: np.ndarray, yaw_rad: np.ndarray) -> Dict[str, Any]:
  """The alignment summary fields (NME by |yaw| bin, failure rates, AUC)."""
  by_bin = metrics.nme_by_yaw_bin(errors, np.degrees(yaw_rad))
  return {
      "normaliser": "bbox: sqrt(w*h) of the ground-truth landmark box",
      "num_faces": int(len(errors)),
      "nme_mean": float(np.mean(errors)),
      "nme_by_yaw_bin": {k: v for k, v in by_bin.items() if k != "mean"},
      "nme_mean_of_bins": by_bin.get("mean"),
      "failure_rate_0.08": float(metrics.failure_rate(errors, 0.08)),
      "failure_rate_0.10": float(metrics.failure_rate(errors, 0.10)),
      "auc_0.08": float(metrics.auc(errors, 0.08)),
  }


def real_face_source(config: Any, seed: int, count: int):
  """The real-face views of ``config.real`` (``data_pipeline.real_views.RealFaceSource`` over
  the fit cache ``config.real.fits``, rendered with ``config.data`` and pipeline seed ``seed``),
  or ``None`` when ``count`` is 0."""
  if not count:
    return None
  from data_pipeline import real_faces  # pylint: disable=g-import-not-at-top
  from data_pipeline import real_views  # pylint: disable=g-import-not-at-top
  real = config.real
  pipeline = pipeline_config_from_dict(dict(config.data), seed=seed)
  real_config = real_faces.RealFacesConfig(fits=str(real.fits), pipeline=pipeline,
                                           photo_fraction=float(real.photo_fraction),
                                           lifts=str(real.get("lifts", "") or ""))
  return real_views.RealFaceSource(real_config, faces_lib.BoxJitter(**dict(config.box_jitter)),
                                   num_examples=count)


def render_mix(config: Any, seed: int, count: int, num_real: int,
               log: Callable[[str], None]) -> Dict[str, np.ndarray]:
  """``num_real`` real-face views (:func:`real_face_source`) followed by ``count`` synthetic
  faces of pipeline seed ``seed``, stacked (FaceSource keys; ``kind`` 0 photo, 1 re-rendered
  real face, 2 synthetic)."""
  parts = []
  if num_real:
    real = render_faces(real_face_source(config, seed, num_real), num_real, log)
    parts.append(real)
  if count:
    data_config = pipeline_config_from_dict(dict(config.data), seed=seed)
    jitter = faces_lib.BoxJitter(**dict(config.box_jitter))
    synthetic = render_faces(faces_lib.FaceSource(data_config, jitter), count, log)
    synthetic["kind"] = np.full(count, 2, np.int32)
    parts.append(synthetic)
  keys = [k for k in parts[0] if all(k in p for p in parts)]
  return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def prepare_split(config: Any, seed: int, count: int, describe: Callable,
                  cascade_config: cascade.CascadeConfig, log: Callable[[str], None],
                  num_real: int = 0, keep_maps: bool = True):
  """Renders ``num_real`` real-face views and ``count`` synthetic faces of pipeline seed
  ``seed``, their crop-frame truth and (``keep_maps``) their descriptor maps, else ``None``."""
  faces = render_mix(config, seed, count, num_real, log)
  crop_boxes = crop_boxes_for(faces["box"], cascade_config)
  size = cascade_config.crop_size
  landmarks_crop = np.asarray(geometry.image_to_crop(faces["landmarks_px"], crop_boxes, size),
                              np.float32)
  pose_crop = pose_to_crop(faces["pose"], crop_boxes, size)
  maps = None
  if keep_maps:
    start = time.time()
    maps = describe_all(describe, faces, crop_boxes, config.batch_size)
    log(f"described {len(crop_boxes)} faces in {time.time() - start:.1f} s")
  return faces, crop_boxes, landmarks_crop, pose_crop, maps


def train_alignment(config: Any, workdir: str | Path,
                    log: Callable[[str], None] = print) -> Dict[str, Any]:
  """Learns and evaluates one cascade; see the module docstring. Returns the summary dict."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  cascade_config = cascade.CascadeConfig(**dict(config.cascade))
  describer = features_lib.make_describer(config.features, config.checkpoint or None)
  describe = make_crop_and_describe(describer, cascade_config.crop_size)
  model = load_face_model(config.face_model)
  alignment_model = cascade.make_alignment_model(model)

  t0 = time.time()
  num_real = int(config.real.num_faces) if "real" in config else 0
  # Maps in memory (float16, 2 MB per face at 128 px, D = 64) up to a few thousand faces;
  # beyond that each stage describes its batches again.
  keep_maps = (num_real + int(config.num_train_faces)) <= int(config.get("max_faces_in_memory",
                                                                         4000))
  train = prepare_split(config, config.train_seed, config.num_train_faces, describe,
                        cascade_config, log, num_real=num_real, keep_maps=keep_maps)
  faces, crop_boxes, landmarks_crop, pose_crop, maps = train
  initial_pose = pose_crop.mean(0)
  if maps is not None:
    batches = batches_from_maps(maps, landmarks_crop, pose_crop, config.batch_size)
  else:
    batches = batches_from_images(describe, faces, crop_boxes, landmarks_crop, pose_crop,
                                  config.batch_size)
  params, stage_log = regression.fit_cascade(
      batches, alignment_model,
      initial_pose, cascade_config, config.landmark_regularisation, config.pose_regularisation,
      log=log, regularisation_grid=tuple(config.get("regularisation_grid", ())),
      validation_every=int(config.get("validation_every", 10)))
  train_seconds = time.time() - t0
  del maps

  eval_faces, eval_boxes, _, _, eval_maps = prepare_split(
      config, config.eval_seed, config.num_eval_faces, describe, cascade_config, log)
  states = run_on_maps(alignment_model, params, cascade_config, eval_maps, config.batch_size)
  predicted = np.asarray(geometry.crop_to_image(states.landmarks_px, eval_boxes,
                                                cascade_config.crop_size))
  errors = landmark_errors(predicted, eval_faces)
  summary = summarise(errors, eval_faces["pose"][:, 2])
  summary.update(features=config.features, descriptor_source=describer.source,
                 face_model=config.face_model, train_faces=int(config.num_train_faces),
                 train_seed=int(config.train_seed), eval_seed=int(config.eval_seed),
                 train_seconds=round(train_seconds, 1), stages=stage_log)
  meta = dict(features=config.features, descriptor_dim=describer.descriptor_dim,
              descriptor_source=describer.source, face_model=config.face_model,
              train_faces=int(config.num_train_faces), eval=summary,
              data=dict(config.data), box_jitter=dict(config.box_jitter),
              real_faces=(dict(config.real) if num_real else None))
  path = cascade_io.save_cascade(workdir / f"cascade_{config.features}.npz", params,
                                 cascade_config, meta)
  (workdir / f"summary_{config.features}.json").write_text(json.dumps(summary, indent=2))
  log(f"wrote {path}")
  return summary
