"""End-to-end training through the alignment loop: encoder and stage regressors together.

The two-stage model (the DFF encoder trained on correspondences, then the cascade's regressors
fitted stage by stage by ridge regression, :mod:`dff_jax.alignment.training`) is fine-tuned as
one network: images and face boxes go in, :func:`dff_jax.alignment.cascade.align_images` crops
them, runs the encoder and the ``lax.scan`` cascade (descriptor reads, linear regressors,
closed-form shape fits) and the loss is the landmark error after the last stage
(:func:`landmark_loss`; with ``config.pose_loss_weight > 0`` plus that weight times the head
rotation's error, :func:`pose_loss`; with ``config.landmarks_3d_loss_weight > 0`` plus that weight
times the same landmark error of the 3D convention's points, ``landmarks_3d_px``, against
:func:`landmarks_3d_targets`). Optax updates the encoder parameters and the regressors
``landmark_weights`` and ``pose_weights`` of every stage (and a hidden layer's weights when the
cascade has one, ``config.hidden_units``); ``pose_std`` and ``initial_pose`` stay
fixed. ``config.remat`` rematerialises each stage in the backward pass (``jax.checkpoint``).
``config.mirror`` trains through test-time mirroring (``Pipeline.mirror``).

Data: synthetic faces of :class:`data_pipeline.faces.FaceSource` (seed ``config.seed``, default
60 000, disjoint from the cascade's training seed 20 000 and evaluation seed 30 000), rendered in
the training process. The batch of step ``t`` holds faces ``t * B, ..., t * B + B - 1`` (mod
``config.num_train_faces``), so the data stream is a pure function of ``(seed, step)`` and a
resumed run sees the batches it would have seen.

Machinery shared with the encoder's trainer: the training loop (:mod:`dff_jax.training.loop`:
NaN guard, checkpoints, progress, ``metrics.jsonl``), meshes and shardings
(:mod:`dff_jax.training.sharding`), ``params_digest`` (:mod:`dff_jax.train`); from
:mod:`dff_jax.checkpoint` the Orbax ``Checkpointer`` and ``export_inference_bundle``.

Length: about 600 lines: the model, the data, the step and the command of one trainer (the
student's construction and the distillation term live in :mod:`dff_jax.training.distill`).

Work directory of :func:`finetune_and_evaluate`::

  WORKDIR/config.json             the encoder's training config with this run's config under
                                  "finetune" (so that dff_jax.checkpoint reads the encoder)
  WORKDIR/finetune_config.json    this run's config
  WORKDIR/checkpoints/<step>/     Orbax checkpoints of the FinetuneState
  WORKDIR/metrics.jsonl           "train" records every log_every steps
  WORKDIR/bundle/                 the fine-tuned encoder (inference bundle; DFF only)
  WORKDIR/cascade_<features>.npz  the fine-tuned cascade (dff_jax.alignment.io)
  WORKDIR/summary.json            held-out NME by yaw bin, before and after fine-tuning

Frames: image points ``(x, y)`` in pixels, x right, y down, pixel ``(i, j)`` centred at
``(j + 0.5, i + 0.5)``; boxes ``(x0, y0, x1, y1)`` in the same frame.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec as P

from data_pipeline import faces as faces_lib
from data_pipeline.config import pipeline_config_from_dict
from dff_jax import checkpoint as checkpoint_lib
from dff_jax import progress as progress_lib
from dff_jax import train as train_lib
from dff_jax.training import distill as distill_lib
from dff_jax.training import loop as loop_lib
from dff_jax.training import sharding as sharding_lib
from dff_jax.alignment import cascade
from dff_jax.alignment import features as features_lib
from dff_jax.alignment import io as cascade_io
from dff_jax.alignment import training
from dff_jax.face_model import load_face_model

Array = Any
PyTree = Any
BATCH_FIELDS = ("image", "box", "landmarks_px", "landmarks_visible", "pose", "shape_coefficients",
                "expression_coefficients", "model_landmarks")
HIDDEN = cascade.HIDDEN_FIELDS
TRAINED = ("landmark_weights", "pose_weights") + HIDDEN


# ----------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------


def landmark_loss(predicted_px: Array, true_px: Array, visible: Array,
                  epsilon_px: float = 1e-3) -> Tuple[Array, Array]:
  """Visibility-aware bbox NME: the training loss of the end-to-end fine-tuning.

  Per face: ``sum_k v_k e_k / max(sum_k v_k, 1) / sqrt(w * h)`` with ``e_k`` the Euclidean
  error of landmark k (smoothed as ``sqrt(|d|^2 + epsilon^2)`` so that its gradient is finite at
  zero error), ``v_k`` its visibility and ``w, h`` the size of the box of all 68 true landmarks
  (the ``"bbox"`` normaliser of :mod:`dff_jax.metrics`). A face with no visible landmark
  contributes 0.

  Args:
    predicted_px: ``[B, 68, 2]`` float32 predicted landmarks, image pixels (x, y).
    true_px: ``[B, 68, 2]`` float32 ground truth, same frame.
    visible: ``[B, 68]`` bool or 0/1 ground-truth visibility.
    epsilon_px: smoothing of the point error (pixels).

  Returns:
    ``(loss [] float32 mean over faces, nme [B] float32 per face)``.
  """
  weight = jnp.asarray(visible).astype(jnp.float32)
  difference = predicted_px - true_px
  errors = jnp.sqrt(jnp.sum(difference * difference, axis=-1) + epsilon_px ** 2)  # [B, 68]
  size = jnp.max(true_px, axis=-2) - jnp.min(true_px, axis=-2)  # [B, 2]
  normaliser = jnp.sqrt(jnp.maximum(size[..., 0] * size[..., 1], 1e-6))
  nme = jnp.sum(weight * errors, axis=-1) / jnp.maximum(jnp.sum(weight, axis=-1), 1.0)
  nme = nme / normaliser
  return jnp.mean(nme), nme


def pose_loss(predicted_rad: Array, true_rad: Array, epsilon_rad: float = 1e-3
              ) -> Tuple[Array, Array]:
  """Mean absolute head-rotation error: the optional pose term of the fine-tuning loss.

  Per face, the mean over (pitch, yaw, roll) of ``sqrt(wrap(d)^2 + epsilon^2)`` with ``d`` the
  angle difference wrapped to (-pi, pi] (smoothed so that its gradient is finite at zero).

  Args:
    predicted_rad: ``[B, 3]`` float32 (pitch, yaw, roll) radians.
    true_rad: ``[B, 3]`` float32, same convention (:mod:`dff_jax.geometry`).
    epsilon_rad: smoothing (radians).

  Returns:
    ``(loss [] float32 mean over faces, error [B] float32 per face, radians)``.
  """
  difference = jnp.asarray(predicted_rad, jnp.float32) - jnp.asarray(true_rad, jnp.float32)
  wrapped = jnp.arctan2(jnp.sin(difference), jnp.cos(difference))
  error = jnp.mean(jnp.sqrt(wrapped * wrapped + epsilon_rad ** 2), axis=-1)
  return jnp.mean(error), error


def landmarks_3d_targets(alignment_model: cascade.AlignmentModel, landmarks_px: Array,
                         pose: Array, shape_coefficients: Array,
                         expression_coefficients: Array) -> Array:
  """The true points of the 3D convention (AFLW2000-3D's, scored on ``landmarks_3d_px``).

  The 51 inner points (17-67) are the annotation's (they are the same points in both
  conventions); the 17 jaw points are the model's fixed jaw-line vertices
  (``landmark_3d_vertex_ids``) of the view's true shape projected under its true pose, hidden
  ones included (:func:`dff_jax.alignment.cascade.fixed_landmarks`): exact for a render, the
  fit's for an annotated photo.

  Args:
    alignment_model: the face model of the data (same identity and expression modes).
    landmarks_px: ``[B, 68, 2]`` float32 annotated points, image pixels (outline convention).
    pose: ``[B, 6]`` float32 ``(scale px/mm, pitch, yaw, roll, tx, ty)``, image pixels.
    shape_coefficients: ``[B, Ki]`` float32; expression_coefficients: ``[B, Ke]`` float32.

  Returns:
    ``[B, 68, 2]`` float32, image pixels.
  """
  as_float = functools.partial(jnp.asarray, dtype=jnp.float32)
  jaw = jax.vmap(cascade.fixed_landmarks, in_axes=(None, 0, 0, 0))(
      alignment_model, as_float(pose), as_float(shape_coefficients),
      as_float(expression_coefficients))[:, :17]
  return jnp.concatenate([jaw, jnp.asarray(landmarks_px, jnp.float32)[:, 17:]], axis=1)


# ----------------------------------------------------------------------------------------------
# The model: describer + cascade, and the differentiable pipeline
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pipeline:
  """The static parts of the end-to-end model (hashable: jit treats it as a constant).

  Attributes:
    apply: ``(encoder_params, crops [B, S, S, 3] float32 in [0, 255]) -> [B, S, S, D]`` (the
      :class:`dff_jax.alignment.features.Describer`'s ``apply``).
    config: the cascade's static settings.
    remat: rematerialise each cascade stage in the backward pass.
    teacher_apply: with ``distill_weight > 0``, the frozen teacher encoder's ``apply`` (its
      parameters are ``fixed["teacher"]``): the trained encoder's feature pyramid (a dense
      encoder's descriptor map) is pulled towards the teacher's on the same crops
      (:func:`dff_jax.training.distill.distill_loss`).
    distill_weight: weight of that term in the loss (0: no teacher).
    mirror: train and evaluate through test-time mirroring (``config.mirror``; every stage
      averages its steps on the crop and the mirrored crop, :func:`cascade.apply_stage`).
  """
  apply: Callable[[Any, Array], Array]
  config: cascade.CascadeConfig
  remat: bool = True
  teacher_apply: Optional[Callable[[Any, Array], Any]] = None
  distill_weight: float = 0.0
  mirror: bool = False


def split_cascade(params: cascade.CascadeParams) -> Tuple[Dict[str, Array], Dict[str, Array]]:
  """``(trained, fixed)``: ``{"landmark_weights", "pose_weights"}`` (plus ``"hidden_weights",
  "output_weights"`` with a hidden layer) and ``{"pose_std", "initial_pose"}`` (plus
  ``"refine_weights"``: an output refinement is kept as it is, not trained; fit it again after
  fine-tuning; and ``"descriptor_template"``, likewise) of a
  :class:`~dff_jax.alignment.cascade.CascadeParams`."""
  trained = {name: jnp.asarray(getattr(params, name), jnp.float32) for name in TRAINED
             if getattr(params, name) is not None}
  fixed = {name: jnp.asarray(getattr(params, name), jnp.float32)
           for name in ("pose_std", "initial_pose", "refine_weights", "descriptor_template")
           if getattr(params, name) is not None}
  return trained, fixed


def join_cascade(trained: Mapping[str, Array], fixed: Mapping[str, Array]
                 ) -> cascade.CascadeParams:
  """Inverse of :func:`split_cascade` (``fixed`` may also hold the teacher's ``"teacher"``)."""
  return cascade.CascadeParams(**dict(trained), pose_std=fixed["pose_std"],
                               initial_pose=fixed["initial_pose"],
                               refine_weights=fixed.get("refine_weights"),
                               descriptor_template=fixed.get("descriptor_template"))


def pipeline_loss(pipeline: Pipeline, params: PyTree, fixed: Mapping[str, Array],
                  alignment_model: cascade.AlignmentModel, images: Array, boxes_xyxy: Array,
                  landmarks_px: Array, visible: Array, pose: Optional[Array] = None,
                  pose_weight: float = 0.0, coefficients: Optional[Tuple[Array, Array]] = None,
                  landmarks_3d_weight: float = 0.0, model_landmarks: Optional[Array] = None
                  ) -> Tuple[Array, Dict[str, Array]]:
  """Images -> encoder -> cascade -> :func:`landmark_loss`, plus ``pose_weight`` times
  :func:`pose_loss` and ``landmarks_3d_weight`` times :func:`landmark_loss` of
  ``landmarks_3d_px`` against :func:`landmarks_3d_targets` (all 68 points) when they are
  positive (differentiable in every float input).

  Args:
    pipeline: static parts.
    params: ``{"encoder": encoder params (``{}`` for SIFT), "cascade": {"landmark_weights"
      [K, F, 136], "pose_weights" [K, F, 6]}}`` float32.
    fixed: ``{"pose_std" [K, 6], "initial_pose" [6]}`` float32 (not trained), and with a
      teacher its parameters under ``"teacher"``.
    alignment_model: the face model and its precomputed geometry.
    images: ``[B, H, W, 3]`` uint8 or float32 in [0, 255].
    boxes_xyxy: ``[B, 4]`` float32 face boxes, image pixels.
    landmarks_px: ``[B, 68, 2]`` float32 true landmarks, image pixels.
    visible: ``[B, 68]`` bool true visibility.
    pose: ``[B, 6]`` float32 true ``(scale, pitch, yaw, roll, tx, ty)`` (the angles are read
      by the pose term, all of it by the 3D-landmark term).
    pose_weight: weight of the pose term (static; 0 leaves the loss as the landmark term alone).
    coefficients: ``(shape [B, Ki], expression [B, Ke])`` float32 true coefficients (needed
      when ``landmarks_3d_weight > 0``).
    landmarks_3d_weight: weight of the 3D-convention landmark term (static).
    model_landmarks: optional ``[B]`` bool, the faces whose labels are the face model's own
      landmark vertices (renders): their labels are first moved into the cascade's landmark
      convention (:func:`dff_jax.alignment.cascade.model_labels_in_convention`; needs
      ``pose``). ``None``: labels used as given.

  Returns:
    ``(loss [], {"loss", "nme" [B], "landmarks_px" [B, 68, 2]})``, plus ``"pose_error_rad"
    [B]`` with the pose term, ``"nme_3d" [B]`` with the 3D-landmark term and ``"distill" []``
    with a teacher (``pipeline.distill_weight``).
  """
  if pose_weight > 0 and pose is None:
    raise ValueError("pose_weight > 0 needs the true pose of every face")
  if landmarks_3d_weight > 0 and (pose is None or coefficients is None
                                  or any(c is None for c in coefficients)):
    raise ValueError("landmarks_3d_weight > 0 needs the true pose and coefficients of every face")
  if model_landmarks is not None:
    if pose is None:
      raise ValueError("model_landmarks needs the true pose of every face")
    landmarks_px = cascade.model_labels_in_convention(alignment_model, landmarks_px, pose,
                                                      model_landmarks)
  describe = functools.partial(pipeline.apply, params["encoder"])
  result = cascade.align_images(describe, alignment_model, join_cascade(params["cascade"], fixed),
                                images, boxes_xyxy, pipeline.config, remat=pipeline.remat,
                                mirror=pipeline.mirror)
  loss, nme = landmark_loss(result.landmarks_px, landmarks_px, visible)
  aux = {"nme": nme, "landmarks_px": result.landmarks_px}
  if pose_weight > 0:
    predicted = jnp.stack([result.pitch_rad, result.yaw_rad, result.roll_rad], axis=-1)
    angle_loss, aux["pose_error_rad"] = pose_loss(predicted, jnp.asarray(pose)[..., 1:4])
    loss = loss + pose_weight * angle_loss
  if landmarks_3d_weight > 0:
    targets = landmarks_3d_targets(alignment_model, landmarks_px, pose, *coefficients)
    loss_3d, aux["nme_3d"] = landmark_loss(result.landmarks_3d_px, targets,
                                           jnp.ones(targets.shape[:2], bool))
    loss = loss + landmarks_3d_weight * loss_3d
  if pipeline.distill_weight > 0:
    crops, _ = cascade.crop_faces(images, boxes_xyxy, pipeline.config)
    teacher = jax.lax.stop_gradient(
        distill_lib.pyramid_levels(pipeline.teacher_apply(fixed["teacher"], crops)))
    aux["distill"] = distill_lib.distill_loss(
        distill_lib.pyramid_levels(pipeline.apply(params["encoder"], crops)), teacher)
    loss = loss + pipeline.distill_weight * aux["distill"]
  aux["loss"] = loss
  return loss, aux


# ----------------------------------------------------------------------------------------------
# Train state, optimizer, step
# ----------------------------------------------------------------------------------------------


class FinetuneState(struct.PyTreeNode):
  """Everything a resumed run needs (a pytree; Orbax saves it whole).

  Attributes:
    step: ``[]`` int32 optimizer steps taken.
    params: ``{"encoder": flax params, "cascade": {"landmark_weights", "pose_weights"}}``.
    opt_state: optax state of :func:`make_optimizer`.
  """
  step: Array
  params: PyTree
  opt_state: PyTree

  def exported_params(self) -> PyTree:
    """The parameters a run exports."""
    return self.params


class EmaFinetuneState(FinetuneState):
  """:class:`FinetuneState` of a run with ``config.ema_decay > 0`` (a subclass, so that the
  checkpoints of runs without a moving average keep their tree).

  Attributes:
    ema_params: the exponential moving average of ``params`` over the steps (same tree; it
      starts at the starting parameters, so needs no bias correction), which the run exports.
  """
  ema_params: PyTree

  def exported_params(self) -> PyTree:
    """The moving average."""
    return self.ema_params


def make_schedule(config: ml_collections.ConfigDict, peak: float) -> optax.Schedule:
  """Linear warm-up to ``peak`` over ``warmup_steps`` then cosine decay to
  ``peak * end_learning_rate_fraction`` at ``schedule_steps`` (0 = ``num_steps``). A horizon
  independent of ``num_steps`` lets a run be extended (``--config.num_steps``) bit-identically."""
  horizon = int(config.get("schedule_steps", 0) or 0) or int(config.num_steps)
  warmup = int(min(config.warmup_steps, max(horizon - 1, 0)))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=max(horizon, warmup + 1),
      end_value=peak * float(config.end_learning_rate_fraction))


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW on the encoder (``learning_rate``, weight decay on kernels),
  Adam on the linear regressors (``cascade_learning_rate``) and on a hidden layer's weights
  (``hidden_learning_rate``, default ``cascade_learning_rate``)."""
  decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # noqa: E731
  encoder = optax.adamw(make_schedule(config, float(config.learning_rate)),
                        weight_decay=float(config.weight_decay), mask=decay_mask)
  regressors = optax.adam(make_schedule(config, float(config.cascade_learning_rate)))
  hidden_rate = float(config.get("hidden_learning_rate", 0.0) or config.cascade_learning_rate)
  hidden = optax.adam(make_schedule(config, hidden_rate))

  def labels(params):
    return {"encoder": jax.tree.map(lambda _: "encoder", params["encoder"]),
            "cascade": {k: "hidden" if k in HIDDEN else "cascade" for k in params["cascade"]}}
  return optax.chain(optax.clip_by_global_norm(float(config.grad_clip_norm)),
                     optax.multi_transform({"encoder": encoder, "cascade": regressors,
                                            "hidden": hidden}, labels))


def init_state(config: ml_collections.ConfigDict, params: PyTree) -> FinetuneState:
  """The step-0 state around the starting parameters."""
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  state = dict(step=jnp.zeros((), jnp.int32), params=params,
               opt_state=make_optimizer(config).init(params))
  if ema_decay(config) > 0:
    return EmaFinetuneState(**state, ema_params=params)
  return FinetuneState(**state)


def ema_decay(config: ml_collections.ConfigDict) -> float:
  """``config.ema_decay`` (0: no moving average), checked to lie in ``[0, 1)``."""
  decay = float(config.get("ema_decay", 0.0) or 0.0)
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"config.ema_decay={decay} must be in [0, 1) (0 keeps no moving average; "
                     "0.998 averages over about 500 steps).")
  return decay


def update_ema(ema: PyTree, params: PyTree, decay: float) -> PyTree:
  """One step of the moving average: ``ema + (1 - decay) * (params - ema)`` per leaf."""
  return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema, params)


def train_step(state: FinetuneState, batch: Mapping[str, Array], fixed: Mapping[str, Array],
               alignment_model: cascade.AlignmentModel, *, pipeline: Pipeline,
               config: ml_collections.ConfigDict) -> Tuple[FinetuneState, Dict[str, Array]]:
  """One optimizer step on a global batch of :data:`BATCH_FIELDS` (leading ``[B]`` axis).

  Returns ``(new_state, metrics)``: scalars ``loss``, ``grad_norm``, ``grad_norm_encoder``,
  ``grad_norm_cascade``, ``learning_rate``.
  """
  def loss_fn(params):
    loss, aux = pipeline_loss(pipeline, params, fixed, alignment_model, batch["image"],
                              batch["box"], batch["landmarks_px"], batch["landmarks_visible"],
                              batch.get("pose"), float(config.get("pose_loss_weight", 0.0)),
                              (batch.get("shape_coefficients"),
                               batch.get("expression_coefficients")),
                              float(config.get("landmarks_3d_loss_weight", 0.0)),
                              batch.get("model_landmarks"))
    if int(config.get("debug_nan_step", -1)) >= 0:  # Test hook: poison one step's loss.
      loss = loss * jnp.where(state.step == int(config.debug_nan_step), jnp.nan, 1.0)
    return loss, aux

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  optimizer = make_optimizer(config)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "grad_norm": optax.global_norm(grads),
             "grad_norm_encoder": optax.global_norm(grads["encoder"]),
             "grad_norm_cascade": optax.global_norm(grads["cascade"]),
             "learning_rate": make_schedule(config, float(config.learning_rate))(state.step)}
  if "distill" in aux:
    metrics["distill"] = aux["distill"]
  if "nme_3d" in aux:
    metrics["nme_3d"] = jnp.mean(aux["nme_3d"])
  state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  if isinstance(state, EmaFinetuneState):
    state = state.replace(ema_params=update_ema(state.ema_params, params, ema_decay(config)))
  return state, metrics


# ----------------------------------------------------------------------------------------------
# Starting point and data
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StartingPoint:
  """The two-stage model fine-tuning starts from.

  Attributes:
    describer: the descriptor function (its ``params`` are the starting encoder).
    params: ``{"encoder", "cascade"}`` trained parameters (see :func:`pipeline_loss`).
    fixed: ``{"pose_std", "initial_pose"}``.
    cascade_config: the cascade's static settings.
    alignment_model: face model + geometry.
    source: a description of where the pieces came from (JSON-able).
    teacher: with ``config.student``, the loaded encoder, frozen (``describer`` is then the
      student: see :func:`dff_jax.training.distill.make_student`).
    encoder_config: the student's encoder config (``None``: the loaded encoder's own).
  """
  describer: features_lib.Describer
  params: PyTree
  fixed: Dict[str, Array]
  cascade_config: cascade.CascadeConfig
  alignment_model: cascade.AlignmentModel
  source: Dict[str, Any]
  teacher: Optional[features_lib.Describer] = None
  encoder_config: Optional[Dict[str, Any]] = None


def face_source(config: ml_collections.ConfigDict, seed: int,
                num_examples: Optional[int] = None) -> faces_lib.FaceSource:
  """Synthetic annotated faces of ``config.data`` / ``config.box_jitter`` with pipeline seed
  ``seed``."""
  data_config = pipeline_config_from_dict(dict(config.data), seed=int(seed))
  return faces_lib.FaceSource(data_config, faces_lib.BoxJitter(**dict(config.box_jitter)),
                              num_examples=num_examples)


def zero_cascade(config: ml_collections.ConfigDict, cascade_config: cascade.CascadeConfig,
                 descriptor_dim: int, num_faces: int = 64) -> cascade.CascadeParams:
  """Regressors that change nothing, with ``initial_pose`` / ``pose_std`` the mean / standard
  deviation of the crop-frame poses of the first ``num_faces`` training faces (every stage gets
  the same ``pose_std``)."""
  source = face_source(config, int(config.seed))
  faces = faces_lib.stack([source[i] for i in range(num_faces)])
  crop_boxes = training.crop_boxes_for(faces["box"], cascade_config)
  poses = training.pose_to_crop(faces["pose"], crop_boxes, cascade_config.crop_size)
  params = cascade.zero_params(cascade_config.num_stages, descriptor_dim, poses.mean(0))
  std = np.maximum(poses.std(0), 1e-3).astype(np.float32)
  return params.replace(pose_std=jnp.tile(jnp.asarray(std)[None], (cascade_config.num_stages, 1)))


def load_starting_point(config: ml_collections.ConfigDict) -> StartingPoint:
  """The encoder (``config.checkpoint``; "" = the one the cascade names, see
  :func:`dff_jax.alignment.features.encoder_for_cascade`; ignored for SIFT) and the
  cascade (``config.cascade`` file, or "" for :func:`zero_cascade` with ``config.cascade_config``).

  Raises:
    FileNotFoundError / ValueError: missing or inconsistent files (the message says which).
  """
  if config.cascade:
    cascade_params, cascade_config, meta = cascade_io.load_cascade(config.cascade)
    kind = meta.get("features", config.features)
    face_model = meta.get("face_model", config.face_model)
  else:
    cascade_config = cascade.CascadeConfig(**dict(config.cascade_config))
    kind, face_model, cascade_params = config.features, config.face_model, None
  if config.cascade:
    describer = features_lib.describer_for_cascade(config.cascade, dict(meta, features=kind),
                                                   config.checkpoint or None)
  else:
    describer = features_lib.make_describer(kind, config.checkpoint or None)
  if cascade_params is None:
    cascade_params = zero_cascade(config, cascade_config, describer.descriptor_dim)
  units = int(config.get("hidden_units", 0))
  if units and cascade_params.hidden_weights is None:
    # A residual hidden layer that starts as a no-op (cascade.add_hidden_layer).
    cascade_params = cascade.add_hidden_layer(cascade_params, units,
                                              jax.random.key(int(config.seed)))
  teacher, encoder_config = None, None
  if config.get("student"):
    if describer.kind != "dff":
      raise ValueError("config.student needs a DFF encoder to learn from (features = dff)")
    teacher = describer
    describer, encoder_config = distill_lib.make_student(teacher, config.student,
                                                         cascade_config.crop_size,
                                                         int(config.seed))
  if cascade_params.descriptor_dim != describer.descriptor_dim:
    raise ValueError(
        f"the cascade {config.cascade or '(zero)'} expects {cascade_params.descriptor_dim}-d "
        f"descriptors but the {kind} describer {describer.source} gives "
        f"{describer.descriptor_dim}: pass a cascade trained on these features")
  trained, fixed = split_cascade(cascade_params)
  if teacher is not None:
    fixed["teacher"] = teacher.params
  encoder_params = describer.params if describer.params is not None else {}
  model = load_face_model(face_model)
  offsets = landmark_offsets_for(config, model, meta if config.cascade else {},
                                 cascade_config.shape_regularisation)
  # A calibrated starting cascade keeps its output calibration (trained through, and written).
  output_offsets = cascade.output_offsets_of(dict(meta)) if config.cascade else None
  fit_modes = fit_modes_for(config, meta if config.cascade else {})
  alignment_model = cascade.with_fit_modes(
      cascade.make_alignment_model(model, landmark_offsets=offsets, output_offsets=output_offsets),
      fit_modes)
  source = dict(features=kind, descriptor_source=describer.source,
                descriptor_dim=describer.descriptor_dim, face_model=face_model,
                cascade=str(config.cascade or "zero regressors"))
  if offsets is not None:
    source["landmark_offsets_mm"] = np.round(offsets.astype(np.float64), 4).tolist()
  if output_offsets is not None:
    source["output_offsets_mm"] = np.round(output_offsets.astype(np.float64), 4).tolist()
  if fit_modes is not None:
    source["fit_modes"] = fit_modes
  return StartingPoint(
      describer=describer, params={"encoder": encoder_params, "cascade": trained}, fixed=fixed,
      cascade_config=cascade_config, alignment_model=alignment_model, source=source,
      teacher=teacher, encoder_config=encoder_config)


def fit_modes_for(config: ml_collections.ConfigDict, meta: Mapping[str, Any]) -> Optional[int]:
  """The directions the fine-tuned cascade's shape fit solves for, which its file then names
  (:func:`dff_jax.alignment.cascade.with_fit_modes`): ``config.fit_modes`` when positive, else
  the starting cascade's (``meta``; ``None``: all coefficients).

  Raises:
    ValueError: ``config.fit_modes`` is negative or not a whole number.
  """
  modes = config.get("fit_modes", 0)
  if isinstance(modes, (int, np.integer)) and not isinstance(modes, bool) and modes == 0:
    return cascade.fit_modes_of(dict(meta))
  return cascade.checked_fit_modes(modes, "config.fit_modes", "or 0 to keep the starting "
                                   "cascade's")


def landmark_offsets_for(config: ml_collections.ConfigDict, model: Any,
                         meta: Mapping[str, Any], shape_regularisation: float
                         ) -> Optional[np.ndarray]:
  """The landmark offsets (mm, ``[68, 3]``) the fine-tuned cascade uses and stores.

  ``config.landmark_offsets``: ``""`` (default) keeps the starting cascade's (``meta``; none:
  the model's own landmark vertices); ``"fits"`` estimates them from the real-face fit cache
  ``config.real.fits`` (:func:`dff_jax.real_fits.estimate_landmark_offsets` with the cascade's
  ``shape_regularisation`` and ``config.landmark_offsets_rounds`` alternations, default 10);
  ``"none"`` drops them.

  Raises:
    ValueError: an unknown setting, or ``"fits"`` without a fit cache.
  """
  setting = str(config.get("landmark_offsets", ""))
  if setting == "":
    return cascade.landmark_offsets_of(dict(meta))
  if setting == "none":
    return None
  if setting != "fits":
    raise ValueError(f"config.landmark_offsets must be '', 'fits' or 'none', got {setting!r}")
  fits_path = str(config.real.fits) if "real" in config else ""
  if not fits_path:
    raise ValueError("config.landmark_offsets='fits' needs the real-face fit cache "
                     "(--config.real.fits=FILE, from python -m experiments.fit_real_faces)")
  from dff_jax import real_fits  # pylint: disable=g-import-not-at-top
  with np.load(fits_path, allow_pickle=False) as data:
    fits = {name: data[name] for name in ("pose", "landmark_vertex_ids", "landmarks_px", "keep")}
  return real_fits.estimate_landmark_offsets(
      model, fits, shape_regularisation=float(shape_regularisation),
      num_rounds=int(config.get("landmark_offsets_rounds", 10)))


def select_fields(example: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """The fields a step uses: image ``[H, W, 3]`` uint8, box ``[4]`` float32, landmarks_px
  ``[68, 2]`` float32, landmarks_visible ``[68]`` bool, pose ``[6]`` float32 (the view's
  ``(scale, pitch, yaw, roll, tx, ty)``: rendering pose, or the fit's for a photo),
  shape_coefficients ``[Ki]`` and expression_coefficients ``[Ke]`` float32 (the rendered or
  fitted face's), model_landmarks ``[]`` bool (the labels are the model's landmark vertices)."""
  return {"image": np.asarray(example["image"], np.uint8),
          "box": np.asarray(example["box"], np.float32),
          "landmarks_px": np.asarray(example["landmarks_px"], np.float32),
          "landmarks_visible": np.asarray(example["landmarks_visible"], bool),
          "pose": np.asarray(example["pose"], np.float32),
          "shape_coefficients": np.asarray(example["shape_coefficients"], np.float32),
          "expression_coefficients": np.asarray(example["expression_coefficients"], np.float32),
          "model_landmarks": np.asarray(example["model_landmarks"], bool)}


def step_batch(source: Any, step: int, global_batch: int, local_batch: int, process_index: int,
               num_faces: int) -> Dict[str, np.ndarray]:
  """This process's rows of the global batch of ``step``: faces
  ``(step * global_batch + process_index * local_batch + i) mod num_faces``."""
  first = step * global_batch + process_index * local_batch
  examples = [select_fields(source[(first + i) % num_faces]) for i in range(local_batch)]
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def train_batches(config: ml_collections.ConfigDict, start_step: int
                  ) -> Iterator[Dict[str, np.ndarray]]:
  """Batches of steps ``start_step, ..., num_steps - 1`` (a pure function of seed and step)."""
  process_count, process_index = jax.process_count(), jax.process_index()
  global_batch = int(config.global_batch_size)
  local_batch = global_batch // process_count
  num_faces = int(config.num_train_faces)
  source = face_source(config, int(config.seed), num_examples=num_faces)
  real_fraction = float(config.real.fraction) if "real" in config else 0.0
  if real_fraction > 0:
    # Real-face views (photos and re-renders, data_pipeline.real_faces) mixed with synthetic.
    real = training.real_face_source(config, int(config.seed), num_faces)
    source = faces_lib.Mixture([real, source], [real_fraction, 1.0 - real_fraction],
                               seed=int(config.seed), num_examples=num_faces)
  for step in range(start_step, int(config.num_steps)):
    yield step_batch(source, step, global_batch, local_batch, process_index, num_faces)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def predict_landmarks(pipeline: Pipeline, params: PyTree, fixed: Mapping[str, Array],
                      alignment_model: cascade.AlignmentModel, faces: Mapping[str, np.ndarray],
                      batch_size: int) -> np.ndarray:
  """Final landmarks ``[N, 68, 2]`` float32 (image pixels) of stacked faces (``image``, ``box``)."""
  @jax.jit
  def run(params, fixed, alignment_model, images, boxes):
    describe = functools.partial(pipeline.apply, params["encoder"])
    return cascade.align_images(describe, alignment_model,
                                join_cascade(params["cascade"], fixed), images, boxes,
                                pipeline.config, mirror=pipeline.mirror).landmarks_px

  count = len(faces["box"])
  out = []
  for start in range(0, count, batch_size):
    stop = min(start + batch_size, count)
    images = training._pad(faces["image"][start:stop], batch_size)  # pylint: disable=protected-access
    boxes = training._pad(faces["box"][start:stop], batch_size)  # pylint: disable=protected-access
    out.append(np.asarray(run(params, fixed, alignment_model, images, boxes))[:stop - start])
  return np.concatenate(out)


def evaluate(pipeline: Pipeline, params: PyTree, fixed: Mapping[str, Array],
             alignment_model: cascade.AlignmentModel, faces: Mapping[str, np.ndarray],
             batch_size: int) -> Dict[str, Any]:
  """Held-out bbox NME (all 68 landmarks, as :func:`dff_jax.alignment.training.summarise`) by
  |yaw| bin, failure rates and AUC of the model ``(params, fixed)`` on stacked ``faces`` (render
  labels moved into the cascade's landmark convention,
  :func:`dff_jax.alignment.cascade.model_labels_in_convention`)."""
  predicted = predict_landmarks(pipeline, params, fixed, alignment_model, faces, batch_size)
  labels = np.asarray(cascade.model_labels_in_convention(
      alignment_model, faces["landmarks_px"], faces["pose"], faces["model_landmarks"]))
  faces = dict(faces, landmarks_px=labels)
  return training.summarise(training.landmark_errors(predicted, faces), faces["pose"][:, 2])


def render_eval_faces(config: ml_collections.ConfigDict) -> Dict[str, np.ndarray]:
  """The ``config.num_eval_faces`` held-out faces of seed ``config.eval_seed``, stacked."""
  source = face_source(config, int(config.eval_seed))
  return faces_lib.stack([source[i] for i in range(int(config.num_eval_faces))])


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------


def _validate(config: ml_collections.ConfigDict) -> None:
  train_lib.check_steps_and_batch(config)
  seeds = {int(config.seed), int(config.eval_seed)}
  if len(seeds) < 2 or int(config.seed) in (20_000, 30_000):
    raise ValueError(f"config.seed={config.seed} must differ from config.eval_seed and from the "
                     "cascade's train / eval seeds 20000 / 30000 (use e.g. 60000).")


def _workdir_config(config: ml_collections.ConfigDict, start: StartingPoint) -> Dict[str, Any]:
  """``config.json`` of the workdir: the encoder's own training config (what
  :mod:`dff_jax.checkpoint` reads to rebuild the encoder) plus this run's under ``finetune``."""
  experiment: Dict[str, Any] = {}
  if start.describer.kind == "dff":
    encoder = start.teacher or start.describer
    _, meta = checkpoint_lib.load_encoder_params(encoder.source)
    experiment = dict(meta.get("experiment") or {})
    experiment.setdefault("encoder", dict(meta["encoder"]))
    if start.encoder_config is not None:
      experiment["encoder"] = dict(start.encoder_config)
    experiment.setdefault("data", {"image_size": int(meta["image_size"])})
    experiment["encoder"] = dict(experiment["encoder"], channels=int(meta["channels"]))
  experiment["finetune"] = config.to_dict()
  return experiment


def _cascade_meta(config: ml_collections.ConfigDict, start: StartingPoint,
                  steps: int) -> Dict[str, Any]:
  """The meta of the cascade file a run writes after ``steps`` steps."""
  return dict(start.source, finetune_steps=int(steps), finetune_seed=int(config.seed),
              data=dict(config.data), box_jitter=dict(config.box_jitter))


def export_checkpoint(config: ml_collections.ConfigDict, workdir: str | Path,
                      steps: int | Sequence[int], out_dir: str | Path) -> Dict[str, str]:
  """Writes the pair of a finished run's checkpoint ``steps`` to ``out_dir``, as the run writes its
  final pair to its workdir: ``out_dir/bundle/`` (the encoder, DFF only) and
  ``out_dir/cascade_<features>.npz`` (float32, naming that bundle). For choosing among a run's
  checkpoints (keep them with ``config.max_checkpoints_to_keep`` and ``checkpoint_every``); run
  it after the run, not beside it.

  Args:
    steps: one kept step, or several: the pair is then the uniform average of their exported
      parameters (a checkpoint average; the cascade meta lists them under ``averaged_steps``).

  Returns:
    ``{"cascade": path, "bundle": path or None}``.

  Raises:
    ValueError: ``workdir`` has no checkpoint at one of ``steps`` (the message lists those it
      has), or ``steps`` is empty.
  """
  steps = [int(steps)] if np.ndim(steps) == 0 else sorted({int(s) for s in steps})
  if not steps:
    raise ValueError("export_checkpoint: name at least one step")
  workdir, out_dir = Path(workdir).resolve(), Path(out_dir)
  start = load_starting_point(config)
  checkpointer = checkpoint_lib.Checkpointer(workdir, max_to_keep=1_000_000)
  kept = checkpointer.all_steps()
  missing = [step for step in steps if step not in kept]
  if missing:
    raise ValueError(f"{workdir} has no checkpoint at step {', '.join(map(str, missing))}; it "
                     f"has steps {sorted(kept)}")
  abstract = jax.eval_shape(lambda: init_state(config, start.params))
  restored = [jax.device_get(checkpointer.restore(abstract, step).exported_params())
              for step in steps]
  checkpointer.close()
  params = jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0, dtype=np.float64).astype(
      xs[0].dtype), *restored) if len(restored) > 1 else restored[0]
  meta = _cascade_meta(config, start, steps[-1])
  if len(steps) > 1:
    meta["averaged_steps"] = steps
  bundle = None
  if start.describer.kind == "dff":
    _, encoder_meta = checkpoint_lib.load_encoder_params(checkpointer.directory / str(steps[-1]))
    if len(steps) > 1:
      encoder_meta["averaged_steps"] = steps
    bundle = checkpoint_lib.write_inference_bundle(params["encoder"], encoder_meta,
                                                   out_dir / "bundle").resolve()
    meta["descriptor_source"] = str(bundle)
  path = cascade_io.save_cascade(out_dir / f"cascade_{start.source['features']}.npz",
                                 join_cascade(params["cascade"], start.fixed),
                                 start.cascade_config, meta, compact=False)
  return {"cascade": str(path), "bundle": None if bundle is None else str(bundle)}


def finetune_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                          log: Callable[[str], None] = logging.info) -> Dict[str, Any]:
  """Fine-tunes per ``config`` (resuming from ``workdir``), exports and evaluates.

  See the module docstring for the workdir layout; ``experiments/configs/finetune_tiny.py``
  documents the config fields.

  Returns:
    the ``summary.json`` dict: ``before`` / ``after`` evaluation summaries, ``steps``,
    ``params_digest``, ``seconds_per_step`` (of this invocation's steps).

  Raises:
    dff_jax.train.NonFiniteLossError: a non-finite loss or gradient (the step is named; earlier
      checkpoints are kept).
  """
  workdir = Path(workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  _validate(config)
  is_main = jax.process_index() == 0
  start = load_starting_point(config)
  if is_main:
    (workdir / "finetune_config.json").write_text(
        json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str))
    (workdir / checkpoint_lib.CONFIG_FILE).write_text(json.dumps(
        _workdir_config(config, start), indent=2, sort_keys=True, default=str))
  pipeline = Pipeline(apply=start.describer.apply, config=start.cascade_config,
                      remat=bool(config.remat),
                      teacher_apply=start.teacher.apply if start.teacher else None,
                      distill_weight=float(config.get("distill_weight", 0.0)) if start.teacher
                      else 0.0, mirror=bool(config.get("mirror", False)))

  mesh = sharding_lib.create_mesh(config)
  replicated = NamedSharding(mesh, P())
  abstract = jax.eval_shape(lambda: init_state(config, start.params))
  shardings = sharding_lib.state_shardings(config, mesh, abstract)
  checkpointer = checkpoint_lib.Checkpointer(
      workdir, max_to_keep=int(config.max_checkpoints_to_keep),
      save_interval_steps=int(config.checkpoint_every))
  state = train_lib.restore_or_init(
      checkpointer, abstract, shardings,
      lambda: jax.jit(lambda p: init_state(config, p), out_shardings=shardings)(start.params))
  fixed = jax.device_put(start.fixed, replicated)
  alignment_model = jax.device_put(start.alignment_model, replicated)

  step_fn = jax.jit(functools.partial(train_step, pipeline=pipeline, config=config),
                    in_shardings=(shardings, sharding_lib.batch_sharding(mesh), replicated,
                                  replicated),
                    out_shardings=(shardings, replicated), donate_argnums=(0,),
                    compiler_options=sharding_lib.compiler_options(config))
  start_step, num_steps = int(jax.device_get(state.step)), int(config.num_steps)
  writer = progress_lib.MetricsWriter(workdir / "metrics.jsonl", enabled=is_main)
  bar = progress_lib.ProgressBar(num_steps, start_step,
                                 enabled=is_main and bool(config.progress_bar))
  run_start = time.time()
  state = loop_lib.run_training_loop(
      lambda state, local: step_fn(state, sharding_lib.to_global_batch(local, mesh), fixed,
                                   alignment_model),
      state, train_batches(config, start_step), start_step=start_step, num_steps=num_steps,
      checkpointer=checkpointer, writer=writer, bar=bar, log_every=int(config.log_every),
      items_per_step=int(config.global_batch_size),
      hint="Lower config.learning_rate / cascade_learning_rate.")
  steps_run = num_steps - start_step
  seconds_per_step = (time.time() - run_start) / steps_run if steps_run > 0 else None

  params = jax.device_get(state.exported_params())
  summary: Dict[str, Any] = {"steps": int(jax.device_get(state.step)),
                             "params_digest": train_lib.params_digest(params),
                             "seconds_per_step": seconds_per_step, "source": start.source,
                             "train_seed": int(config.seed), "eval_seed": int(config.eval_seed)}
  if is_main:
    meta = _cascade_meta(config, start, summary["steps"])
    if start.describer.kind == "dff":
      bundle = checkpoint_lib.export_inference_bundle(workdir, workdir / "bundle")
      meta["descriptor_source"] = str(bundle)
      summary["bundle"] = str(bundle)
    if int(config.num_eval_faces) > 0:
      faces = render_eval_faces(config)
      batch = int(config.eval_batch_size)
      summary["before"] = evaluate(pipeline, start.params, start.fixed, start.alignment_model,
                                   faces, batch)
      summary["after"] = evaluate(pipeline, params, start.fixed, start.alignment_model, faces,
                                  batch)
      meta["eval"] = summary["after"]
      log(f"held-out bbox NME: two-stage {summary['before']['nme_mean']:.4f}, fine-tuned "
          f"{summary['after']['nme_mean']:.4f}")
    path = cascade_io.save_cascade(workdir / f"cascade_{start.source['features']}.npz",
                                   join_cascade(params["cascade"], start.fixed),
                                   start.cascade_config, meta, compact=False)
    summary["cascade"] = str(path)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
  return summary
