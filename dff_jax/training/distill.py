"""Distillation into a new encoder: a student trained towards a frozen teacher's features.

Used by end-to-end fine-tuning (:mod:`dff_jax.training.finetune`, ``config.student`` and
``config.distill_weight``; ``experiments/configs/finetune_thin.py``): the student is the loaded
encoder's configuration with overrides (e.g. fewer convolutions per pyramid level), started
from the loaded encoder's parameters wherever path and shape agree, and its loss gains
``distill_weight * distill_loss(student pyramid, teacher pyramid)`` on the same crops, so the
cascade keeps reading the features it was fitted on.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dff_jax import checkpoint as checkpoint_lib
from dff_jax.alignment import features as features_lib

Array = Any


def distill_loss(student_levels: Any, teacher_levels: Any) -> Array:
  """Relative squared error between two feature pyramids, averaged over levels.

  Args:
    student_levels, teacher_levels: sequences of ``[B, h_l, w_l, C_l]`` float maps, pairwise the
      same shapes (e.g. the ``levels`` of two :class:`~dff_jax.descriptor_fields.PointField`).

  Returns:
    ``[]`` float32: ``mean_l sum((s_l - t_l)^2) / sum(t_l^2)`` (0 when the pyramids agree; 1
    for a student of zeros), so every level counts alike whatever its scale.
  """
  terms = []
  for student, teacher in zip(student_levels, teacher_levels, strict=True):
    student = jnp.asarray(student, jnp.float32)
    teacher = jnp.asarray(teacher, jnp.float32)
    if student.shape != teacher.shape:
      raise ValueError(f"student level {student.shape} and teacher level {teacher.shape} differ")
    terms.append(jnp.sum(jnp.square(student - teacher)) /
                 jnp.maximum(jnp.sum(jnp.square(teacher)), 1e-12))
  return jnp.mean(jnp.stack(terms))


def pyramid_levels(field: Any) -> Tuple[Array, ...]:
  """What distillation compares: a point field's pyramid levels, or a dense map as one level."""
  return tuple(field.levels) if hasattr(field, "levels") else (field,)


def transfer_params(source: Mapping[str, Any], target: Mapping[str, Any]
                    ) -> Tuple[Dict[str, Any], int]:
  """``target`` with every leaf replaced by ``source``'s leaf at the same path when the shapes
  agree; returns ``(params, number of leaves copied)``."""
  copied = 0

  def merge(source, target):
    nonlocal copied
    out = {}
    for key, value in target.items():
      theirs = source.get(key) if isinstance(source, Mapping) else None
      if isinstance(value, Mapping):
        out[key] = merge(theirs if isinstance(theirs, Mapping) else {}, value)
      elif theirs is not None and np.shape(theirs) == np.shape(value):
        out[key], copied = jnp.asarray(theirs, jnp.float32), copied + 1
      else:
        out[key] = value
    return out

  return merge(source, target), copied


def make_student(teacher: features_lib.Describer, overrides: Mapping[str, Any], crop_size: int,
                 seed: int) -> Tuple[features_lib.Describer, Dict[str, Any]]:
  """A new DFF encoder, the teacher's config with ``overrides`` (e.g. ``convs_per_level``), its
  parameters initialised from ``seed`` and then copied from the teacher wherever a parameter of
  the same path and shape exists (for a thinner pyramid: the first convolution and norm of each
  level, and the point head).

  Returns:
    ``(describer, encoder_config)``: the student (``source`` names the teacher) and its config.
  """
  from dff_jax import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
  _, meta = checkpoint_lib.load_encoder_params(teacher.source)
  encoder_config = dict(meta["encoder"], **{
      k: list(v) if isinstance(v, (tuple, list)) else v for k, v in dict(overrides).items()})
  module = encoder_lib.encoder_from_config(encoder_config)
  channels = teacher.channels
  images = jnp.zeros((1, crop_size, crop_size, channels), jnp.float32)
  fresh = module.init(jax.random.PRNGKey(int(seed)), images)["params"]
  params, copied = transfer_params(teacher.params, fresh)
  logging.info("student encoder: %d of %d parameter arrays copied from the teacher %s", copied,
               len(jax.tree.leaves(fresh)), teacher.source)

  def apply(params, crops):
    return module.apply({"params": params}, encoder_lib.preprocess_images(crops, channels))

  describer = features_lib.Describer(
      kind="dff", descriptor_dim=int(module.descriptor_dim), apply=apply, params=params,
      source=f"student of {teacher.source}", channels=channels)
  return describer, encoder_config
