"""The point-head encoder and descriptor fields (issue 12): descriptors only where they are read."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from dff_jax import descriptor_fields as fields_lib
from dff_jax import encoder as encoder_lib
from dff_jax import losses


def _ramp_field(size=16):
  """A planted field: level 0 holds the crop x of its pixel centres, level 1 the crop y of its
  (stride-2) pixel centres; the head is 100 x identity (GELU(t) = t in float32 for t >= 10),
  then the identity, so the descriptor at an interior point (x, y) is (x, y) / |(x, y)|
  (bilinear interpolation of a linear ramp is exact)."""
  cols = (np.arange(size) + 0.5)[None, :, None] * np.ones((size, 1, 1))
  half = size // 2
  rows = 2.0 * (np.arange(half) + 0.5)[:, None, None] * np.ones((1, half, 1))
  head = {"hidden_kernel": 100 * np.eye(2, dtype=np.float32), "hidden_bias": np.zeros(2, np.float32),
          "out_kernel": np.eye(2, dtype=np.float32), "out_bias": np.zeros(2, np.float32)}
  return fields_lib.PointField(levels=(jnp.asarray(cols, jnp.float32),
                                       jnp.asarray(rows, jnp.float32)),
                               head={k: jnp.asarray(v) for k, v in head.items()})


def test_planted_ramp_field_gives_the_point_direction():
  field = _ramp_field()
  points = jnp.asarray([[3.3, 7.9], [10.0, 2.6], [8.25, 8.75], [2.5, 12.1]], jnp.float32)
  values, inside = fields_lib.query(field, points)
  expected = np.asarray(points) / np.linalg.norm(np.asarray(points), axis=-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(values), expected, atol=1e-6)
  assert np.all(np.asarray(inside))
  # Outside the crop: zero and not inside.
  values, inside = fields_lib.query(field, jnp.asarray([[-1.0, 3.0], [3.0, 16.5]]))
  assert not np.any(np.asarray(inside)) and np.all(np.asarray(values) == 0)
  # Points with several leading axes keep them: [2, 2, 2] -> values [2, 2, 2], inside [2, 2].
  values, inside = fields_lib.query(field, points.reshape(2, 2, 2))
  np.testing.assert_allclose(np.asarray(values), expected.reshape(2, 2, 2), atol=1e-6)
  assert inside.shape == (2, 2)


def test_a_dense_map_is_read_bilinearly_and_described_by_its_shape():
  """A dense map [H, W, D] holding (x, y, 1) of its pixel centres is read exactly at sub-pixel
  points (bilinear reading of a linear ramp), with any leading axes of the points, zero outside;
  num_faces, leading_shape and descriptor_dim read a batch of maps and a point field alike."""
  size = 12
  ys, xs = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
  ramp = jnp.asarray(np.stack([xs, ys, np.ones_like(xs)], -1), jnp.float32)
  points = jnp.asarray([[[3.3, 7.9], [10.0, 2.6]], [[0.7, 11.2], [13.0, 4.0]]], jnp.float32)
  values, inside = fields_lib.query(ramp, points)
  assert values.shape == (2, 2, 3) and values.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(inside), [[True, True], [True, False]])
  expected = np.concatenate([np.asarray(points), np.ones((2, 2, 1))], -1) * np.asarray(
      inside)[..., None]
  np.testing.assert_allclose(np.asarray(values), expected, atol=1e-5)
  maps = jnp.zeros((5, 3, size, size, 7))
  assert fields_lib.num_faces(maps) == 5 and fields_lib.leading_shape(maps, 2) == (5, 3)
  assert fields_lib.descriptor_dim(maps) == 7
  field = _ramp_field()
  assert fields_lib.descriptor_dim(field) == 2 and fields_lib.leading_shape(field, 1) == (16,)


def _shifted_ramps(shifts, size=16):
  """``[B]`` planted ramp fields (see :func:`_ramp_field`) whose level 0 holds ``x + shift``: the
  descriptor of face ``b`` at an interior point ``(x, y)`` is ``(x + s_b, y) / |(x + s_b, y)|``."""
  field = _ramp_field(size)
  shifts = jnp.asarray(shifts, jnp.float32)
  level0 = field.levels[0][None] + shifts[:, None, None, None]
  level1 = jnp.broadcast_to(field.levels[1], (len(shifts),) + field.levels[1].shape)
  return (level0, level1), field.head


def _planted_directions(points, shifts):
  points = np.asarray(points, np.float64)
  shifted = points + np.stack([np.asarray(shifts, np.float64), np.zeros(len(shifts))], -1)[:, None]
  return shifted / np.linalg.norm(shifted, axis=-1, keepdims=True)


def _dot_batch_dims(fn, *args):
  """The batch dimensions of every dot_general in ``fn``'s jaxpr (sub-jaxprs included)."""
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        found.append(len(eqn.params["dimension_numbers"][1][0]))
      for param in eqn.params.values():
        for sub in param if isinstance(param, (tuple, list)) else (param,):
          if isinstance(sub, jax.extend.core.ClosedJaxpr):
            walk(sub.jaxpr)
          elif isinstance(sub, jax.extend.core.Jaxpr):
            walk(sub)
  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


def test_a_shared_head_is_read_once_for_all_faces():
  """Three faces of planted ramps under one broadcast head (as an encoder makes them): the
  batched read gives each face its planted direction, and the head's products have no batch
  dimension (one product over all faces' points); without the flag the same values come from
  one product per face."""
  shifts = [0.0, 5.0, -2.0]
  levels, head = _shifted_ramps(shifts)
  points = jnp.asarray(np.broadcast_to([[3.3, 7.9], [10.0, 2.6], [8.25, 8.75]], (3, 3, 2)),
                       jnp.float32)
  expected = _planted_directions(points, shifts)
  for shared in (True, False):
    field = fields_lib.PointField(levels=levels, head=fields_lib.broadcast_head(head, (3,)),
                                  shared_head=shared)
    values, inside = fields_lib.query_batch(field, points)
    np.testing.assert_allclose(np.asarray(values), expected, atol=1e-6)
    assert np.all(np.asarray(inside))
    batch_dims = _dot_batch_dims(fields_lib.query_batch, field, points)
    assert len(batch_dims) == 2 and set(batch_dims) == ({0} if shared else {1})
    # No faces: nothing to take the head from, and nothing read.
    empty = fields_lib.map_faces(lambda x: x[:0], field)
    values, inside = fields_lib.query_batch(empty, points[:0])
    assert values.shape == (0, 3, 2) and inside.shape == (0, 3)


def test_fields_with_their_own_heads_keep_them_and_concatenation_clears_sharing():
  """Face 1's head swaps the descriptor's two values: unshared, each face is read with its own
  head; two shared fields joined by concatenate are no longer marked shared, so they are too."""
  levels, head = _shifted_ramps([0.0, 0.0])
  swapped = dict(head, out_kernel=jnp.asarray([[0.0, 1.0], [1.0, 0.0]]))
  points = jnp.asarray([[[3.3, 7.9]], [[3.3, 7.9]]], jnp.float32)
  direction = _planted_directions(points[:1], [0.0])[0, 0]
  parts = [fields_lib.PointField(levels=tuple(level[k:k + 1] for level in levels),
                                 head=fields_lib.broadcast_head(h, (1,)), shared_head=True)
           for k, h in enumerate((head, swapped))]
  joined = fields_lib.concatenate(parts)
  assert not joined.shared_head
  values, _ = fields_lib.query_batch(joined, points)
  np.testing.assert_allclose(np.asarray(values)[:, 0], [direction, direction[::-1]], atol=1e-6)
  assert fields_lib.concatenate(parts[:1]).shared_head


def test_concatenating_fields_of_different_kinds_or_head_dtypes_is_a_clear_error():
  """Point fields whose heads run in float32 and in bfloat16 (encoders loaded with different
  matmul_dtype), a point field and a dense map, or nothing at all cannot be joined: a ValueError
  names why."""
  levels, head = _shifted_ramps([0.0, 0.0])
  field = fields_lib.PointField(levels=levels, head=fields_lib.broadcast_head(head, (2,)),
                                shared_head=True)
  with pytest.raises(ValueError, match="different dtypes.*same matmul_dtype"):
    fields_lib.concatenate([field, field.replace(head_dtype="bfloat16")])
  with pytest.raises(ValueError, match="dense descriptor maps with point fields; describe every "
                     "crop with the same encoder"):
    fields_lib.concatenate([field, jnp.zeros((2, 16, 16, 2))])
  assert fields_lib.concatenate([field, field]).levels[0].shape[0] == 4
  with pytest.raises(ValueError, match="at least one descriptor field"):
    fields_lib.concatenate([])


def test_concatenate_joins_sets_of_views_along_the_given_axis():
  """Two [2, V] sets of views (V = 1 and 2) joined along axis 1 give [2, 3] views, each where
  it was: view k of set b keeps its planted shift."""
  size = 8
  shifts = np.arange(6, dtype=np.float32).reshape(2, 3)
  maps = jnp.asarray(shifts[:, :, None, None, None] * np.ones((1, 1, size, size, 2)), jnp.float32)
  joined = fields_lib.concatenate([maps[:, :1], maps[:, 1:]], axis=1)
  assert fields_lib.leading_shape(joined, 2) == (2, 3)
  np.testing.assert_array_equal(np.asarray(joined)[:, :, 0, 0, 0], shifts)
  levels, head = _shifted_ramps([0.0, 0.0])
  views = fields_lib.PointField(levels=tuple(l[:, None] for l in levels),
                                head=fields_lib.broadcast_head(head, (2, 1)), shared_head=True)
  joined = fields_lib.concatenate([views, views], axis=1)
  assert fields_lib.leading_shape(joined, 2) == (2, 2) and not joined.shared_head


def test_vmap_faces_nests_over_sets_of_views_and_passes_gradients_to_the_head():
  """A [2, 3] (sets, views) field with a shared head read by two nested vmap_faces gives every
  view its planted direction; the gradient of a read with respect to the head parameters the
  field was broadcast from matches finite differences."""
  shifts = [0.0, 5.0, -2.0, 1.0, 3.0, 7.0]
  levels, head = _shifted_ramps(shifts)
  levels = tuple(level.reshape((2, 3) + level.shape[1:]) for level in levels)
  points = jnp.asarray(np.broadcast_to([[3.3, 7.9], [10.0, 2.6]], (2, 3, 2, 2)), jnp.float32)

  @jax.jit
  def read(head_params):
    field = fields_lib.PointField(levels=levels,
                                  head=fields_lib.broadcast_head(head_params, (2, 3)),
                                  shared_head=True)
    views = fields_lib.vmap_faces(lambda f, p: fields_lib.vmap_faces(fields_lib.query)(f, p)[0])
    return views(field, points)

  expected = _planted_directions(points.reshape(6, 2, 2), shifts).reshape(2, 3, 2, 2)
  np.testing.assert_allclose(np.asarray(read(head)), expected, atol=1e-6)
  small = {k: v * 0.01 for k, v in head.items()}  # GELU's curved part, not its linear tail
  weights = jnp.arange(24, dtype=jnp.float32).reshape(2, 3, 2, 2)
  check_grads(lambda h: jnp.sum(read(h) * weights), (small,), order=1, modes=("rev",),
              atol=2e-2, rtol=2e-2, eps=1e-3)


def _point_encoder_and_field(seed=0, batch=2, size=32):
  module = encoder_lib.encoder_from_config(dict(features=(8, 16, 16), descriptor_dim=8,
                                                head="point", head_hidden=16))
  images = jax.random.normal(jax.random.PRNGKey(seed), (batch, size, size, 1))
  variables = jax.jit(module.init)(jax.random.PRNGKey(seed + 1), images)
  return module, variables, images


def test_point_query_equals_dense_map_at_pixel_centres():
  module, variables, images = _point_encoder_and_field()
  field = jax.jit(module.apply)(variables, images)
  dense = jax.jit(lambda v, x: module.apply(v, x, method="dense"))(variables, images)
  assert dense.shape == (2, 32, 32, 8)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(dense), axis=-1), 1.0, atol=1e-5)
  rng = np.random.default_rng(0)
  rows, cols = rng.integers(0, 32, size=(2, 50)), rng.integers(0, 32, size=(2, 50))
  centres = jnp.asarray(np.stack([cols + 0.5, rows + 0.5], -1), jnp.float32)
  queried, inside = jax.jit(fields_lib.query_batch)(field, centres)
  expected = np.asarray(dense)[np.arange(2)[:, None], rows, cols]
  np.testing.assert_allclose(np.asarray(queried), expected, atol=1e-5)
  assert np.all(np.asarray(inside))


def test_point_encoder_jit_matches_eager_and_loads_a_unet_pyramid():
  module, variables, images = _point_encoder_and_field()
  assert module.apply(variables, images).shared_head
  eager = module.apply(variables, images, method="dense")
  jitted = jax.jit(lambda v, x: module.apply(v, x, method="dense"))(variables, images)
  np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), atol=1e-5)
  unet = encoder_lib.encoder_from_config(dict(features=(8, 16, 16), descriptor_dim=8))
  unet_params = jax.eval_shape(unet.init, jax.random.PRNGKey(5), images)["params"]
  shared = sorted(k for k in unet_params if k.startswith("encoder_"))
  assert shared == sorted(k for k in variables["params"] if k.startswith("encoder_"))
  for name in shared:
    jax.tree.map(lambda a, b: np.testing.assert_equal(np.shape(a), np.shape(b)),
                 unet_params[name], variables["params"][name])


def test_gradients_through_the_point_head():
  module, variables, images = _point_encoder_and_field(batch=1, size=16)
  field = jax.tree.map(lambda x: x[0], jax.jit(module.apply)(variables, images))
  points = jnp.asarray([[3.3, 7.9], [10.2, 2.6], [8.4, 11.7]], jnp.float32)

  @jax.jit
  def read(levels, head, pts):
    values, _ = fields_lib.query(fields_lib.PointField(levels=levels, head=head), pts)
    return jnp.sum(values * jnp.arange(values.shape[-1], dtype=jnp.float32))

  check_grads(read, (field.levels, field.head, points), order=1, modes=("rev",), atol=2e-2,
              rtol=2e-2, eps=1e-3)


def test_patch_loss_on_a_point_field_equals_it_on_its_dense_map():
  module, variables, images = _point_encoder_and_field(batch=2, size=16)
  field = jax.jit(module.apply)(variables, images)
  dense = jax.jit(lambda v, x: module.apply(v, x, method="dense"))(variables, images)
  rng = np.random.default_rng(1)
  vertex_ids = jnp.asarray(rng.integers(-1, 30, size=(2, 16, 16)), jnp.int32)
  table = jnp.asarray(rng.integers(0, 5, size=(3, 30)), jnp.int32)
  classifiers = losses.init_patch_classifiers(jax.random.PRNGKey(2), 3, 8, 5)
  kwargs = dict(segmentation_ids=jnp.asarray([0, 2], jnp.int32), logit_scale=10.0,
                num_pixels_per_image=64, key=jax.random.PRNGKey(3))
  loss = jax.jit(lambda descriptors: losses.patch_classification_loss(
      descriptors, vertex_ids, table, classifiers, **kwargs))
  loss_field, metrics_field = loss(field)
  loss_dense, metrics_dense = loss(dense)
  np.testing.assert_allclose(float(loss_field), float(loss_dense), rtol=1e-5)
  assert float(metrics_field["num_classified"]) == float(metrics_dense["num_classified"])


def test_unknown_head_is_a_clear_error():
  with pytest.raises(ValueError, match="head"):
    encoder_lib.encoder_from_config(dict(features=(8, 16), head="sparse"))


def test_map_in_chunks_keeps_every_crop_in_its_place():
  from dff_jax.alignment import cascade
  crops = jnp.arange(16, dtype=jnp.float32)[:, None, None, None] * jnp.ones((16, 4, 4, 3))
  describe = lambda c: fields_lib.PointField(  # noqa: E731  (a field whose level 0 is the crop)
      levels=(c[..., :1],), head={"out_bias": jnp.zeros((c.shape[0], 2))})
  for chunk in (0, 3, 4, 8, 16):
    out = cascade.map_in_chunks(describe, crops, chunk)
    np.testing.assert_array_equal(np.asarray(out.levels[0][:, 0, 0, 0]), np.arange(16))
    assert out.head["out_bias"].shape == (16, 2)


def test_point_bundle_loads_for_dense_maps_and_for_the_cascade(tmp_path):
  """A point-head bundle gives unit dense maps to the feature commands (descriptor_maps) and
  point fields to the cascade describer, whose dense form is the same maps."""
  from conftest import write_random_bundle  # pylint: disable=g-import-not-at-top
  from dff_jax import descriptor_maps  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import features  # pylint: disable=g-import-not-at-top
  bundle = write_random_bundle(tmp_path / "bundle", 16, head="point")
  crops = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 3)) * 255.0
  maps = np.asarray(descriptor_maps.load_dff(bundle).describe(crops))
  assert maps.shape == (2, 16, 16, 4)
  np.testing.assert_allclose(np.linalg.norm(maps, axis=-1), 1.0, atol=1e-5)
  describer = features.dff_describer(bundle)
  assert isinstance(describer(crops), fields_lib.PointField)
  np.testing.assert_allclose(np.asarray(describer.dense(crops)), maps, atol=1e-5)


def test_a_cascade_names_the_encoder_it_was_trained_on(tmp_path):
  """Without --checkpoint a cascade runs on the encoder it names: its bundle beside it, else the
  existing folder it was trained on (descriptor_source), else the shipped default."""
  from dff_jax.alignment import features  # pylint: disable=g-import-not-at-top
  cascade_path = tmp_path / "run" / "cascade_dff.npz"
  trained_on = tmp_path / "encoder_bundle"
  trained_on.mkdir()
  assert features.encoder_for_cascade(cascade_path, {"encoder_bundle": "b"}) == (
      cascade_path.parent / "b")
  assert features.encoder_for_cascade(cascade_path, {"descriptor_source": str(trained_on)}) == (
      trained_on)
  assert features.encoder_for_cascade(
      cascade_path, {"descriptor_source": "dff_jax/assets/x (fine-tuned)"}) == (
          features.DEFAULT_DFF_BUNDLE)


def test_ridge_training_keeps_point_fields_in_host_memory():
  """describe_all stores a point field per face (pyramid levels float16, head float32) in order,
  and batches_from_maps pads the last batch by repeating its last face."""
  from dff_jax.alignment import training  # pylint: disable=g-import-not-at-top

  def describe(images, boxes):  # a field whose level 0 holds each face's index
    index = images[:, :1, :1, :1].astype(jnp.float32) * jnp.ones((1, 4, 4, 2))
    head = {"out_bias": boxes[:, :2]}
    return fields_lib.PointField(levels=(index,), head=head)

  faces = {"image": np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((5, 8, 8, 3),
                                                                               np.uint8)}
  boxes = np.arange(20, dtype=np.float32).reshape(5, 4)
  stored = training.describe_all(describe, faces, boxes, batch_size=2)
  assert stored.levels[0].dtype == np.float16 and stored.head["out_bias"].dtype == np.float32
  np.testing.assert_array_equal(stored.levels[0][:, 0, 0, 0], np.arange(5))
  np.testing.assert_array_equal(stored.head["out_bias"], boxes[:, :2])
  batches = list(training.batches_from_maps(stored, np.zeros((5, 68, 2)), np.zeros((5, 6)), 4)())
  last_fields, _, _, weight = batches[-1]
  np.testing.assert_array_equal(np.asarray(last_fields.levels[0][:, 0, 0, 0]), [4, 4, 4, 4])
  np.testing.assert_array_equal(weight, [1, 0, 0, 0])
