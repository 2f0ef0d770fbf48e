"""Descriptor fields: what an encoder returns for a face crop, and the one way to read it.

A *descriptor field* describes every point of a crop, sub-pixel ones included. Two kinds:

* a **dense map**, a ``[..., H, W, D]`` array (the U-Net :class:`dff_jax.encoder.DFFEncoder`,
  dense SIFT): a point is read by bilinear interpolation (:func:`dff_jax.sampling.bilinear_sample`),
  so values between pixel centres are mixtures of unit vectors, slightly shorter than 1;
* a :class:`PointField` (the :class:`dff_jax.encoder.PointDFFEncoder`): the encoder's feature
  pyramid, computed once per crop, plus a small head. A point is read by sampling every pyramid
  level bilinearly at it and passing the concatenation through the head, so descriptors are
  computed only where they are read (68 landmarks per cascade stage instead of ``H x W`` pixels).
  Its dense map is the same function at every pixel centre (:func:`to_dense`).

Every leaf of a batched field carries the face axis first (``[B, ...]``): a field can be vmapped,
indexed, padded and concatenated with ``jax.tree_util`` like an array. A :class:`PointField`'s
head parameters are therefore broadcast along the batch (:func:`broadcast_head`), which under jit
costs nothing but a view, and whose gradient is the sum over faces.

A plain ``jax.vmap`` over such a field evaluates the head as ``B`` small products, one per face
(each face "has" its own head). A field made by one encoder says that its faces share one head
(``shared_head``), and :func:`vmap_faces` then passes the head once, so the head's two layers run
as one product over every face's points, with the same values (``python -m
experiments.benchmark --what=loop_profile`` times the cascade's read of the head both ways).

Frames (DESIGN.md section 3): points ``(x, y)`` in crop pixels, pixel ``(i, j)`` centred at
``(j + 0.5, i + 0.5)``; level ``l`` of a pyramid has stride ``2 ** l``, so the crop point ``p``
is the level point ``p / 2 ** l`` (pixel centres map to pixel centres' averages exactly).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp

from dff_jax import sampling

Array = Any
Field = Any  # a dense map [..., H, W, D] or a PointField


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-12) -> Array:
  """``x / max(||x||, sqrt(eps))`` along ``axis``; finite value and gradient at ``x = 0`` (a zero
  vector maps to zero). Any shape and float dtype; returns ``x``'s shape and dtype."""
  squared_norm = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squared_norm, eps))


@flax.struct.dataclass
class PointField:
  """A feature pyramid and the head that turns its samples into descriptors.

  Attributes:
    levels: ``L`` maps ``[..., H / 2**l, W / 2**l, C_l]`` (finest first, any float dtype).
    head: ``{"hidden_kernel": [C, M], "hidden_bias": [M], "out_kernel": [M, D],
      "out_bias": [D]}`` float32, ``C = sum(C_l)``, with the same leading axes as ``levels``
      (see :func:`broadcast_head`).
    shared_head: static: every face along the leading axes has the same head (it was broadcast
      from one set of parameters, as an encoder's fields are), so :func:`vmap_faces` may read
      it once. Slicing, reshaping and padding faces keep it; :func:`concatenate` of several
      fields clears it (they may come from different encoders).
    head_dtype: static: the operand dtype of the head's two products, ``"float32"`` or
      ``"bfloat16"`` (accumulated in float32; the encoder's ``matmul_dtype``).
  """
  levels: Tuple[Array, ...]
  head: Mapping[str, Array]
  shared_head: bool = flax.struct.field(pytree_node=False, default=False)
  head_dtype: str = flax.struct.field(pytree_node=False, default="float32")

  @property
  def image_shape(self) -> Tuple[int, int]:
    """``(H, W)`` of the crop (level 0)."""
    return tuple(self.levels[0].shape[-3:-1])

  @property
  def descriptor_dim(self) -> int:
    return int(self.head["out_bias"].shape[-1])


def broadcast_head(head: Mapping[str, Array], batch_shape: Sequence[int]) -> dict:
  """Head parameters with leading axes ``batch_shape`` (a broadcast, no copy under jit)."""
  return {k: jnp.broadcast_to(v, tuple(batch_shape) + v.shape) for k, v in head.items()}


def head_apply(head: Mapping[str, Array], features: Array, operand_dtype: str = "float32"
               ) -> Array:
  """The point head: ``[K, C]`` pyramid samples -> ``[K, D]`` float32 unit descriptors
  (dense -> GELU -> dense -> L2 normalise, in float32; the two products' operands rounded to
  ``operand_dtype`` and accumulated in float32). GELU, not ReLU: with ReLU a point whose hidden
  units are all negative would get an all-zero, not a unit, descriptor."""
  def dense(x, kernel, bias):
    if operand_dtype == "float32":
      product = jnp.dot(x, kernel, precision=jax.lax.Precision.HIGHEST)
    else:
      product = jnp.dot(x.astype(operand_dtype), kernel.astype(operand_dtype),
                        preferred_element_type=jnp.float32)
    return product + bias
  hidden = jax.nn.gelu(dense(features.astype(jnp.float32), head["hidden_kernel"],
                             head["hidden_bias"]))
  return l2_normalize(dense(hidden, head["out_kernel"], head["out_bias"]))


def pyramid_samples(levels: Sequence[Array], points_px: Array) -> Tuple[Array, Array]:
  """Every level of one face's pyramid sampled at crop points.

  Args:
    levels: ``L`` maps ``[H / 2**l, W / 2**l, C_l]``.
    points_px: ``[K, 2]`` crop points ``(x, y)``.

  Returns:
    ``(features [K, sum C_l] float32, inside [K] bool)``; inside is the crop's (level 0's) rule.
  """
  values, inside = [], None
  for level, level_map in enumerate(levels):
    sampled, level_inside = sampling.bilinear_sample(level_map, points_px / (2.0 ** level))
    values.append(sampled.astype(jnp.float32))
    inside = level_inside if inside is None else inside
  return jnp.concatenate(values, axis=-1), inside


def query(field: Field, points_px: Array) -> Tuple[Array, Array]:
  """Descriptors of one face's field at crop points.

  Args:
    field: a dense map ``[H, W, D]`` or an unbatched :class:`PointField`.
    points_px: ``[..., 2]`` float crop points ``(x, y)``.

  Returns:
    ``(values [..., D] float32, inside [...] bool)``; values are zero outside the crop. A
    :class:`PointField` gives unit vectors; a dense map bilinear mixtures of its pixels.
  """
  if not isinstance(field, PointField):
    values, inside = sampling.bilinear_sample(field, points_px)
    return values.astype(jnp.float32), inside
  points = jnp.asarray(points_px, jnp.float32)
  batch_shape = points.shape[:-1]
  features, inside = pyramid_samples(field.levels, points.reshape(-1, 2))
  values = jnp.where(inside[:, None], head_apply(field.head, features, field.head_dtype), 0.0)
  return values.reshape(batch_shape + (-1,)), inside.reshape(batch_shape)


def vmap_faces(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``jax.vmap(fn)`` over the leading axis of every argument, with each :class:`PointField`
  argument whose ``shared_head`` is set passed with its head once (the first face's, unbatched:
  ``in_axes`` ``None``) instead of per face.

  Inside ``fn`` every field looks as under ``jax.vmap``: levels and head without the mapped axis
  (so a nested ``vmap_faces`` or ``jax.vmap`` over a further leading axis works too). The values
  are those of ``jax.vmap(fn)``; the head's products see all faces' points at once. Gradients
  reach the head parameters the field was broadcast from (:func:`broadcast_head`) unchanged.

  Args:
    fn: a function of per-face arguments (fields, arrays, pytrees; ``None`` allowed).

  Returns:
    The mapped function: same arguments with a leading face axis, outputs with one.
  """
  def mapped(*args):
    axes = tuple(PointField(levels=0, head=None, shared_head=True, head_dtype=a.head_dtype)
                 if _has_shared_head(a) else 0 for a in args)
    args = tuple(a.replace(head=jax.tree_util.tree_map(lambda h: h[0], a.head))
                 if _has_shared_head(a) else a for a in args)
    return jax.vmap(fn, in_axes=axes)(*args)
  return mapped


def _has_shared_head(field: Any) -> bool:
  """A point field whose faces share one head, with at least one face to take it from."""
  return (isinstance(field, PointField) and field.shared_head
          and all(leaf.shape[0] > 0 for leaf in jax.tree_util.tree_leaves(field.head)))


def query_batch(fields: Field, points_px: Array) -> Tuple[Array, Array]:
  """:func:`query` over a batch: ``[B, ...]`` fields, ``[B, K, 2]`` points ->
  ``([B, K, D], [B, K])`` (:func:`vmap_faces`)."""
  return vmap_faces(query)(fields, points_px)


def pixel_centres(height: int, width: int) -> Array:
  """``[H * W, 2]`` float32 centres ``(j + 0.5, i + 0.5)`` in row-major pixel order."""
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                            jnp.arange(width, dtype=jnp.float32), indexing="ij")
  return jnp.stack([cols.reshape(-1) + 0.5, rows.reshape(-1) + 0.5], axis=-1)


def to_dense(field: Field) -> Array:
  """One face's dense map ``[H, W, D]`` float32: the field read at every pixel centre (a dense
  map is returned as it is)."""
  if not isinstance(field, PointField):
    return field
  height, width = field.image_shape
  values, _ = query(field, pixel_centres(height, width))
  return values.reshape(height, width, -1)


def to_dense_batch(fields: Field) -> Array:
  """:func:`to_dense` over a batch: ``[B, ...]`` fields -> ``[B, H, W, D]``."""
  if not isinstance(fields, PointField):
    return fields
  return vmap_faces(to_dense)(fields)


def map_faces(fn: Callable[[Array], Array], fields: Field) -> Field:
  """``fn`` applied to every leaf (e.g. ``lambda x: x[:n]`` to take faces, a reshape of the
  leading axes, ``np.asarray``)."""
  return jax.tree_util.tree_map(fn, fields)


def concatenate(fields: Sequence[Field], axis: int = 0) -> Field:
  """Fields of the same kind joined along a leading axis (point fields: ``shared_head``
  cleared when there are several, since their heads may differ).

  Raises:
    ValueError: no fields, dense maps and point fields mixed, or point fields whose heads'
      products run in different dtypes (``head_dtype``: encoders loaded with different
      ``matmul_dtype``).
  """
  fields = list(fields)
  if not fields:
    raise ValueError("concatenate needs at least one descriptor field")
  kinds = {isinstance(f, PointField) for f in fields}
  if len(kinds) > 1:
    raise ValueError("cannot concatenate dense descriptor maps with point fields; describe "
                     "every crop with the same encoder")
  dtypes = sorted({f.head_dtype for f in fields if isinstance(f, PointField)})
  if len(dtypes) > 1:
    raise ValueError(f"cannot concatenate point fields whose heads run in different dtypes "
                     f"{dtypes}; load their encoders with the same matmul_dtype")
  if len(fields) > 1 and kinds == {True}:
    fields = [f.replace(shared_head=False) for f in fields]
  return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=axis), *fields)


def num_faces(fields: Field) -> int:
  """The size of the leading (face) axis."""
  return int(leading_shape(fields, 1)[0])


def leading_shape(fields: Field, ndim: int) -> Tuple[int, ...]:
  """The first ``ndim`` (batch) axes of fields, e.g. ``[B, V]`` of multi-view sets."""
  reference = fields.levels[0] if isinstance(fields, PointField) else fields
  return tuple(reference.shape[:ndim])


def descriptor_dim(fields: Field) -> int:
  """``D``, the size of the descriptors the fields give."""
  if isinstance(fields, PointField):
    return fields.descriptor_dim
  return int(fields.shape[-1])
