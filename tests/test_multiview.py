"""Tests of dff_jax.alignment.multiview (joint shape fit over views, the multi-view cascade) and
the experiments.align_multiview command.

Tiny shapes: the default face model cut to 6 identity and 4 expression components, 32 px crops,
4-d smooth random descriptor maps, random or zero regressors (no trained cascade, no DFF assets).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dff_jax import geometry
from dff_jax import sampling
from dff_jax.alignment import cascade
from dff_jax.alignment import multiview
from dff_jax.face_model import model as face_model_lib

from test_cascade import (_fixed_conv_describe, centred_pose, small_alignment_model,
                          small_face_model)

ROOT = Path(__file__).resolve().parents[1]
CROP = 32
DIM = 4
CONFIG = cascade.CascadeConfig(num_stages=2, crop_size=CROP)


def random_params(num_stages, key, weight_std=0.05):
  """Random regressors moving landmarks by ~1 px and the pose by ~1 std per stage."""
  feature_dim = cascade.NUM_LANDMARKS * DIM + 1
  key_w, key_v = jax.random.split(key)
  return cascade.CascadeParams(
      landmark_weights=weight_std * jax.random.normal(key_w, (num_stages, feature_dim, 136)),
      pose_weights=weight_std * jax.random.normal(key_v, (num_stages, feature_dim, 6)),
      pose_std=jnp.tile(jnp.asarray([[0.002, 0.02, 0.02, 0.02, 0.3, 0.3]]), (num_stages, 1)),
      initial_pose=jnp.asarray(centred_pose()))


def smooth_maps(key, batch, size=CROP, dim=DIM):
  """``[batch, size, size, dim]`` float32 smooth random descriptor maps (blurred noise)."""
  noise = jax.random.normal(key, (batch, size + 4, size + 4, dim))
  kernel = jnp.ones((5, 5, 1, dim)) / 25.0
  return jax.lax.conv_general_dilated(noise, kernel, (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=dim) * 5.0


_run_single = jax.jit(cascade.run_cascade, static_argnames=("config", "remat"))
# No LLVM optimisation: the programs compile faster on 2 cores (same numbers up to float
# rounding).
FAST_COMPILE = {"xla_backend_optimization_level": 0}
_run_joint = jax.jit(multiview.run_multiview_cascade,
                     static_argnames=("config", "share_expression", "remat", "prior_per_view"),
                     compiler_options=FAST_COMPILE)


# ----------------------------------------------------------------------------------------------
# The multi-view cascade
# ----------------------------------------------------------------------------------------------


def test_one_view_equals_single_view_cascade():
  am = small_alignment_model()
  params = random_params(2, jax.random.key(1))
  maps = smooth_maps(jax.random.key(2), 1)
  single, single_stages = _run_single(am, params, maps[0], CONFIG)
  for share in (False, True):
    joint, joint_stages = _run_joint(am, params, maps, CONFIG, share_expression=share)
    assert joint.landmarks_px.shape == (1, 68, 2)
    assert joint_stages.landmarks_px.shape == (2, 1, 68, 2)
    # The single-view cascade actually moved (random regressors), and the joint one followed.
    assert float(jnp.abs(single.landmarks_px - single_stages.landmarks_px[0]).max()) > 0.05
    np.testing.assert_allclose(joint.landmarks_px[0], single.landmarks_px, atol=2e-3)
    np.testing.assert_allclose(joint.pose[0], single.pose, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(joint.visibility[0], single.visibility)
    np.testing.assert_allclose(joint.shape_coefficients[0], single.shape_coefficients, atol=2e-3)
    np.testing.assert_allclose(joint.expression_coefficients[0], single.expression_coefficients,
                               atol=2e-3)


def test_identity_shared_expression_per_view_or_shared():
  am = small_alignment_model()
  params = random_params(2, jax.random.key(3))
  maps = smooth_maps(jax.random.key(4), 3)
  joint, _ = _run_joint(am, params, maps, CONFIG)
  shape = np.asarray(joint.shape_coefficients)
  assert shape.shape == (3, 6) and np.all(np.isfinite(shape))
  np.testing.assert_array_equal(shape, np.broadcast_to(shape[0], shape.shape))
  assert np.abs(shape[0]).max() > 1e-3
  expression = np.asarray(joint.expression_coefficients)
  assert np.abs(expression[0] - expression[1]).max() > 1e-5  # per-view expression differs
  # Poses and landmarks stay per view.
  assert np.abs(np.asarray(joint.pose[0] - joint.pose[1])).max() > 1e-5
  shared, _ = _run_joint(am, params, maps, CONFIG, share_expression=True)
  expression = np.asarray(shared.expression_coefficients)
  np.testing.assert_array_equal(expression, np.broadcast_to(expression[0], expression.shape))


def test_padded_view_changes_nothing():
  """A view with mask 0 contributes no equations: the real views' results are unchanged."""
  am = small_alignment_model()
  params = random_params(2, jax.random.key(5))
  maps = smooth_maps(jax.random.key(6), 3)
  two, _ = _run_joint(am, params, maps[:2], CONFIG)
  padded, _ = _run_joint(am, params, maps, CONFIG, view_mask=jnp.array([1.0, 1.0, 0.0]))
  np.testing.assert_allclose(padded.landmarks_px[:2], two.landmarks_px, atol=2e-3)
  np.testing.assert_allclose(padded.shape_coefficients[0], two.shape_coefficients[0], atol=2e-3)
  # Batched over sets (vmap) == one set at a time.
  batched = jax.jit(multiview.align_multiview_crops, static_argnames=("config",))(
      am, params, jnp.stack([maps[:2], maps[1:]]), CONFIG)
  other, _ = _run_joint(am, params, maps[1:], CONFIG)
  np.testing.assert_allclose(batched.landmarks_px[0], two.landmarks_px, atol=2e-3)
  np.testing.assert_allclose(batched.landmarks_px[1], other.landmarks_px, atol=2e-3)


def test_jit_equals_no_jit():
  """One joint stage (features, regression, joint fit, re-projection), jitted and eager."""
  am = small_alignment_model()
  params = random_params(1, jax.random.key(7))
  maps = smooth_maps(jax.random.key(8), 2)
  states = multiview.initial_states(am, params, CONFIG, 2)
  stage = (params.landmark_weights[0], params.pose_weights[0], params.pose_std[0])
  mask = jnp.ones((2,), jnp.float32)
  jitted, _ = jax.jit(multiview.apply_joint_stage, static_argnames=("config",))(
      am, stage, states, maps, mask, CONFIG)
  with jax.disable_jit():
    eager, _ = multiview.apply_joint_stage(am, stage, states, maps, mask, CONFIG)
  np.testing.assert_allclose(jitted.landmarks_px, eager.landmarks_px, atol=1e-3)
  np.testing.assert_allclose(jitted.shape_coefficients, eager.shape_coefficients, atol=1e-3)
  np.testing.assert_allclose(jitted.expression_coefficients, eager.expression_coefficients,
                             atol=1e-3)


def test_gradients_wrt_descriptor_maps_are_finite():
  am = small_alignment_model()
  params = random_params(2, jax.random.key(9))
  maps = smooth_maps(jax.random.key(10), 2)
  target = jnp.asarray(np.random.default_rng(0).uniform(8, 24, (2, 68, 2)), jnp.float32)

  def loss(maps):
    states, _ = multiview.run_multiview_cascade(am, params, maps, CONFIG, remat=True)
    return jnp.mean((states.landmarks_px - target) ** 2) + jnp.sum(states.shape_coefficients**2)

  value, grad = jax.jit(jax.value_and_grad(loss))(maps)
  assert np.isfinite(float(value))
  grad = np.asarray(grad)
  assert grad.shape == maps.shape and np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


# ----------------------------------------------------------------------------------------------
# The joint fit on a noiseless toy problem
# ----------------------------------------------------------------------------------------------


def test_joint_fit_recovers_shape_better_than_single_views():
  """Landmarks exactly projected from a known shape at several poses: the joint fit (identity
  shared) recovers the 3D face better than each view's own fit (the depth a frontal view
  cannot see comes from the profile views, and vice versa)."""
  am = small_alignment_model()
  model = small_face_model()
  rng = np.random.default_rng(0)
  identity = rng.normal(size=6).astype(np.float32) * 1.5
  expression = np.zeros(4, np.float32)
  poses = np.stack([centred_pose(yaw) for yaw in (-70.0, -25.0, 0.0, 40.0, 75.0)])
  poses[:, 1] = np.radians(rng.uniform(-10, 10, len(poses)))
  landmarks, visibility = [], []
  for pose in poses:
    lm, vis, _ = cascade.project_landmarks(am, jnp.asarray(pose), jnp.asarray(identity),
                                           jnp.asarray(expression))
    landmarks.append(lm)
    visibility.append(vis)
  landmarks, visibility = jnp.stack(landmarks), jnp.stack(visibility)
  config = cascade.CascadeConfig(num_stages=1, crop_size=CROP, shape_regularisation=10.0)
  joint = jax.jit(multiview.joint_refit, static_argnames=("config", "share_expression"))(
      am, landmarks, jnp.asarray(poses), visibility, config)
  singles = [cascade.refit(am, landmarks[v], jnp.asarray(poses[v]), visibility[v], config)
             for v in range(len(poses))]

  face = np.asarray(model.vertex_part) == face_model_lib.PART_FACE
  truth = np.asarray(face_model_lib.vertices(model, identity, expression))[face]

  def shape_error(shape, expr):
    points = np.asarray(face_model_lib.vertices(model, np.asarray(shape), np.asarray(expr)))[face]
    s, r, t = geometry.estimate_similarity(points.astype(np.float64), truth.astype(np.float64))
    aligned = geometry.apply_similarity(points.astype(np.float64), s, r, t)
    return float(np.mean(np.linalg.norm(aligned - truth, axis=1)))

  joint_error = np.mean([shape_error(joint.shape_coefficients[v], joint.expression_coefficients[v])
                         for v in range(len(poses))])
  single_error = np.mean([shape_error(s.shape_coefficients, s.expression_coefficients)
                          for s in singles])
  per_view = jax.jit(multiview.joint_refit,
                     static_argnames=("config", "share_expression", "prior_per_view"))(
      am, landmarks, jnp.asarray(poses), visibility, config, prior_per_view=True)
  per_view_error = np.mean([shape_error(per_view.shape_coefficients[v],
                                        per_view.expression_coefficients[v])
                            for v in range(len(poses))])
  print(f"toy shape error mm: joint {joint_error:.3f} (prior per view {per_view_error:.3f}), "
        f"single {single_error:.3f}")
  assert joint_error < 0.7 * single_error, (joint_error, single_error)
  assert per_view_error < single_error, (per_view_error, single_error)
  # Re-projected landmarks stay on the (exact) targets in every view.
  error_px = np.abs(np.asarray(joint.landmarks_px - landmarks)) * np.asarray(visibility)[..., None]
  assert error_px.max() < 1.0


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------

_CMD_CROP = 64


@pytest.fixture(scope="module")
def command_setup(tmp_path_factory):
  """Two renders of one synthetic person written as PNGs, a zero-regressor SIFT cascade."""
  from data_pipeline import faces as faces_lib
  from data_pipeline import pairs
  from data_pipeline.config import pipeline_config_from_dict
  from dff_jax import image_io
  from dff_jax.alignment import io as cascade_io, training
  root = tmp_path_factory.mktemp("multiview")
  config = pipeline_config_from_dict(dict(image_size=_CMD_CROP, num_views=2,
                                          num_correspondences=4), seed=321)
  sample = pairs.PairSource(config)[0]
  images = root / "images"
  images.mkdir()
  boxes = {}
  for v in range(2):
    image_io.write_png_atomic(images / f"view{v}.png", sample["images"][v])
    boxes[f"view{v}.png"] = faces_lib.landmark_box(sample["landmarks_px"][v]).tolist()
  (root / "boxes.json").write_text(json.dumps(boxes))
  cascade_config = cascade.CascadeConfig(num_stages=2, crop_size=_CMD_CROP)
  crop_boxes = training.crop_boxes_for(np.asarray(list(boxes.values()), np.float32),
                                       cascade_config)
  pose = np.stack([np.concatenate([[sample[k][v] for k in faces_lib.POSE_KEYS],
                                   sample["translation_px"][v]]) for v in range(2)])
  initial_pose = training.pose_to_crop(pose, crop_boxes, _CMD_CROP).mean(0)
  params = cascade.zero_params(2, 128, initial_pose)
  path = cascade_io.save_cascade(root / "cascade_sift.npz", params, cascade_config,
                                 dict(features="sift", descriptor_dim=128, face_model="default"))
  return dict(root=root, images=images, cascade=path, boxes=root / "boxes.json")


def test_command_writes_json_for_each_view(command_setup, tmp_path):
  from dff_jax.alignment import files
  images = command_setup["images"]
  out = tmp_path / "out"
  summary = files.align_multiview_files(
      f"{images / 'view0.png'},{images / 'view1.png'}", out, boxes=str(command_setup["boxes"]),
      cascade=str(command_setup["cascade"]), features="sift")
  assert summary["written"] == ["view0", "view1"] and summary["failed"] == []
  names = sorted(p.name for p in out.iterdir())
  assert names == ["multiview.json", "view0.json", "view0_overlay.png", "view1.json",
                   "view1_overlay.png"]
  documents = [json.loads((out / f"view{v}.json").read_text()) for v in range(2)]
  docs = []
  for document in documents:
    assert document["multiview"] is True and document["size_wh"] == [_CMD_CROP, _CMD_CROP]
    assert len(document["faces"]) == 1
    doc = document["faces"][0]
    assert {"landmarks_px", "visibility", "pose", "shape_coefficients",
            "expression_coefficients", "box", "score"} <= set(doc)
    assert np.asarray(doc["landmarks_px"]).shape == (68, 2)
    assert np.all(np.isfinite(doc["landmarks_px"]))
    docs.append(doc)
  assert docs[0]["shape_coefficients"] == docs[1]["shape_coefficients"]
  assert docs[0]["landmarks_px"] != docs[1]["landmarks_px"]
  overview = json.loads((out / "multiview.json").read_text())
  assert overview["shape_coefficients"] == docs[0]["shape_coefficients"]
  assert [v["stem"] for v in overview["views"]] == ["view0", "view1"]
  assert overview["num_views"] == 2 and overview["share_expression"] is False
  assert overview["prior_per_view"] is True


def test_command_names_itself_in_per_image_messages(command_setup, tmp_path):
  """``align --multiview`` (``command="align"``): the warning about a file that is no image and
  the line of a corrupt image start with ``align:``; the two good views are aligned."""
  from dff_jax.alignment import files
  folder = tmp_path / "views"
  folder.mkdir()
  for name in ("view0.png", "view1.png"):
    (folder / name).write_bytes((command_setup["images"] / name).read_bytes())
  (folder / "broken.png").write_bytes(b"not a png")
  (folder / "notes.txt").write_text("x")
  boxes = json.loads(command_setup["boxes"].read_text())
  boxes["broken.png"] = boxes["view0.png"]
  (tmp_path / "boxes.json").write_text(json.dumps(boxes))
  messages = []
  summary = files.align_multiview_files(
      str(folder), tmp_path / "out", boxes=str(tmp_path / "boxes.json"),
      cascade=str(command_setup["cascade"]), features="sift", overlay=False,
      report=messages.append, command="align")
  assert summary["written"] == ["view0", "view1"] and len(summary["failed"]) == 1
  assert len(messages) == 2, messages
  assert messages[0].startswith("align: warning: ") and "notes.txt" in messages[0], messages
  assert messages[1].startswith("align: skipped ") and "broken.png" in messages[1], messages


def test_command_missing_image_one_line_error(command_setup, tmp_path):
  """Through ``experiments.align --multiview`` (the issue's entry point)."""
  images = command_setup["images"]
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.align", "--multiview",
       f"--images={images / 'view0.png'},{images / 'nope.png'}", f"--out_dir={tmp_path / 'o'}",
       f"--cascade={command_setup['cascade']}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("align: error:"), proc.stderr
  assert "nope.png" in lines[0]
  assert not (tmp_path / "o").exists()


def test_point_fields_run_through_the_multiview_cascade():
  """A set of views described by point fields (the point-head encoder) runs through the joint
  cascade like dense maps; one view equals the single-view cascade on the same field."""
  from dff_jax import descriptor_fields  # pylint: disable=g-import-not-at-top
  am = small_alignment_model()
  params = random_params(2, jax.random.key(1))
  levels = (jax.nn.relu(smooth_maps(jax.random.key(2), 2, dim=3)),
            jax.nn.relu(smooth_maps(jax.random.key(3), 2, size=CROP // 2, dim=5)))
  head = {"hidden_kernel": jax.random.normal(jax.random.key(4), (8, 6)),
          "hidden_bias": jnp.zeros(6), "out_kernel": jax.random.normal(jax.random.key(5), (6, DIM)),
          "out_bias": jnp.zeros(DIM)}
  fields = descriptor_fields.PointField(levels=levels,
                                        head=descriptor_fields.broadcast_head(head, (2,)))
  joint, _ = _run_joint(am, params, fields, CONFIG, share_expression=False)
  assert joint.landmarks_px.shape == (2, 68, 2)
  first = jax.tree_util.tree_map(lambda x: x[:1], fields)
  one, _ = _run_joint(am, params, first, CONFIG, share_expression=False)
  single, _ = _run_single(am, params, jax.tree_util.tree_map(lambda x: x[0], fields), CONFIG)
  np.testing.assert_allclose(one.landmarks_px[0], single.landmarks_px, atol=2e-3)
  batched = multiview.align_multiview_crops(
      am, params, jax.tree_util.tree_map(lambda x: x[None], fields), CONFIG)
  assert batched.landmarks_px.shape == (1, 2, 68, 2)


def test_batched_wrappers_forward_every_option():
  """align_multiview_crops (a batch of sets) and align_multiview_images (one set of images) give
  what run_multiview_cascade gives for each option: shared expression, a padded view, one prior
  per view; the images path also maps to image pixels with the 3D-jaw landmarks."""
  am = small_alignment_model()
  params = random_params(2, jax.random.key(31))
  maps = smooth_maps(jax.random.key(32), 3)
  crops_fn = jax.jit(multiview.align_multiview_crops,
                     static_argnames=("config", "share_expression", "remat", "prior_per_view"),
                     compiler_options=FAST_COMPILE)
  mask = jnp.array([1.0, 0.0, 1.0])
  # All three options at once (each changes the answer, checked below, so a wrapper that
  # dropped any one of them would differ); one compile instead of four.
  for options in (dict(share_expression=True, view_mask=mask, prior_per_view=True),):
    expected, _ = _run_joint(
        am, params, maps, CONFIG, options.get("share_expression", False),
        options.get("view_mask", jnp.ones(3)), prior_per_view=options.get("prior_per_view", False))
    batch_options = dict(options)
    if "view_mask" in batch_options:
      batch_options["view_mask"] = batch_options["view_mask"][None]
    got = crops_fn(am, params, maps[None], CONFIG, **batch_options)
    for field in ("landmarks_px", "pose", "shape_coefficients", "expression_coefficients"):
      np.testing.assert_allclose(getattr(got, field)[0], getattr(expected, field), atol=2e-3,
                                 err_msg=f"{field} {sorted(options)}")
  # The options change the answer (else the comparison above would prove nothing).
  plain, _ = _run_joint(am, params, maps, CONFIG, False, jnp.ones(3))
  shared, _ = _run_joint(am, params, maps, CONFIG, True, jnp.ones(3))
  per_view, _ = _run_joint(am, params, maps, CONFIG, False, jnp.ones(3), prior_per_view=True)
  padded, _ = _run_joint(am, params, maps, CONFIG, False, mask)   # same program as plain
  for other in (shared, per_view, padded):
    assert float(jnp.abs(other.shape_coefficients - plain.shape_coefficients).max()) > 1e-4

  # Images: uint8 images and integer boxes, a fixed stand-in encoder.
  describe = _fixed_conv_describe
  images = np.round(np.asarray(jax.random.uniform(jax.random.key(34), (3, 40, 44, 3),
                                                  maxval=255.0))).astype(np.uint8)
  boxes = np.array([[6, 5, 31, 30], [9, 8, 37, 36], [4, 6, 30, 32]], np.int32)
  images_fn = jax.jit(multiview.align_multiview_images,
                      static_argnames=("describe", "config", "share_expression", "prior_per_view"),
                      compiler_options=FAST_COMPILE)
  # Start at 60 degrees of yaw, where the 3D-jaw landmarks differ from the silhouette jaw.
  turned = params.replace(initial_pose=jnp.asarray(centred_pose(60.0)))
  crop_boxes = geometry.square_box(jnp.asarray(boxes, jnp.float32), CONFIG.box_scale)
  crops = jax.vmap(lambda image, box: sampling.crop_image(image, box, CROP))(
      jnp.asarray(images, jnp.float32), crop_boxes)
  for options, args in ((dict(share_expression=True, view_mask=mask, prior_per_view=True),
                         (True, mask, True)),
                        ({}, (False, jnp.ones(3), False))):   # the defaults
    result = images_fn(describe, am, turned, images, boxes, CONFIG, **options)
    expected, _ = _run_joint(am, turned, describe(crops), CONFIG, args[0], args[1],
                             prior_per_view=args[2])
    np.testing.assert_allclose(result.crop_box, crop_boxes, atol=1e-5)
    np.testing.assert_allclose(
        result.landmarks_px, geometry.crop_to_image(expected.landmarks_px, crop_boxes, CROP),
        atol=2e-3)
    np.testing.assert_allclose(result.shape_coefficients, expected.shape_coefficients,
                               atol=2e-3)
    fixed = jax.vmap(cascade.fixed_landmarks, in_axes=(None, 0, 0, 0))(
        am, expected.pose, expected.shape_coefficients, expected.expression_coefficients)
    np.testing.assert_allclose(result.landmarks_3d_px,
                               geometry.crop_to_image(fixed, crop_boxes, CROP), atol=2e-3)
    jaw_gap = np.abs(np.asarray(result.landmarks_3d_px - result.landmarks_px)[:, :17]).max()
    assert jaw_gap > 0.5


def test_joint_fit_of_copies_equals_a_single_view_fit_with_the_prior_scaled():
  """Planted: V identical copies of one view. The joint MAP fit (the default) sums V copies of
  the data against one prior, i.e. the single-view fit with lambda / V; with prior_per_view the
  prior counts once per real view, i.e. the single-view fit with lambda itself, and a padded
  view (all weights 0) changes nothing."""
  am = small_alignment_model()
  rng = np.random.default_rng(3)
  identity = rng.normal(size=6).astype(np.float32)
  pose = jnp.asarray(centred_pose(35.0))
  landmarks, visibility, _ = cascade.project_landmarks(am, pose, jnp.asarray(identity),
                                                       jnp.zeros(4, jnp.float32))
  landmarks = landmarks + jnp.asarray(rng.normal(0, 0.8, (68, 2)), jnp.float32)
  views = 3
  config = cascade.CascadeConfig(num_stages=1, crop_size=CROP, shape_regularisation=10.0)

  def single(regularisation):
    single_config = cascade.CascadeConfig(num_stages=1, crop_size=CROP,
                                          shape_regularisation=regularisation)
    state = jax.jit(lambda *a: cascade.refit(am, *a, single_config))(landmarks, pose, visibility)
    return np.asarray(state.shape_coefficients), np.asarray(state.expression_coefficients)

  def joint(num_views, weights, **options):
    state = jax.jit(lambda *a: multiview.joint_refit(am, *a, config, share_expression=True,
                                                     **options))(
        jnp.stack([landmarks] * num_views), jnp.stack([pose] * num_views), weights)
    return np.asarray(state.shape_coefficients[0]), np.asarray(state.expression_coefficients[0])

  copies = jnp.stack([visibility] * views)
  for (got_shape, got_expression), (want_shape, want_expression) in (
      (joint(views, copies), single(10.0 / views)),
      (joint(views, copies, prior_per_view=True), single(10.0))):
    np.testing.assert_allclose(got_shape, want_shape, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(got_expression, want_expression, rtol=2e-3, atol=2e-3)
  assert not np.allclose(single(10.0 / views)[0], single(10.0)[0], atol=1e-2)  # they differ
  # fit_joint_shape_rows called directly: its default is the MAP weighting too.
  rotation = cascade.pose_rotation(pose)
  ids = face_model_lib.landmark_vertex_ids_for_pose(am.face_model, rotation)
  mean, basis = cascade.landmark_rows(am, ids)
  stack = lambda x: jnp.stack([x] * views)  # noqa: E731
  identity_direct, _ = jax.jit(lambda *a: multiview.fit_joint_shape_rows(
      am, *a, 10.0, share_expression=True))(
          stack(mean), stack(basis), stack(landmarks), stack(pose), stack(rotation), copies)
  np.testing.assert_allclose(identity_direct, single(10.0 / views)[0], rtol=2e-3, atol=2e-3)
  padded = jnp.concatenate([copies, jnp.zeros((1, 68), jnp.float32)])
  np.testing.assert_allclose(joint(views + 1, padded, prior_per_view=True)[0],
                             joint(views, copies, prior_per_view=True)[0], rtol=1e-4, atol=1e-5)


def test_multiview_evaluation_runs_on_point_fields(tmp_path):
  """``experiments.eval_multiview`` with a point-head DFF encoder (both shipped pairs have one):
  the first ``V`` views' descriptor fields are taken as a pytree, not sliced as an array (a
  ``TypeError`` before). A tiny random point encoder and a zero-regressor DFF cascade: every
  method's landmarks and shape errors come out finite for both set sizes."""
  from conftest import write_random_bundle
  from dff_jax.alignment import io as cascade_io
  from dff_jax.evaluation import multiview as multiview_eval
  bundle = write_random_bundle(tmp_path / "point", image_size=32, head="point")
  config = cascade.CascadeConfig(num_stages=1, crop_size=32)
  initial_pose = np.array([0.12, 0.0, 0.0, 0.0, 16.0, 16.0], np.float32)
  params = cascade.zero_params(1, 4, initial_pose)
  path = cascade_io.save_cascade(tmp_path / "cascade_dff.npz", params, config,
                                 dict(features="dff", descriptor_dim=4, face_model="default",
                                      encoder_bundle="point"))
  summary = multiview_eval.evaluate_multiview(tmp_path / "out", features="dff", cascade_path=path,
                                              num_sets=1, views=(2, 3), num_pictures=1,
                                              oracle_noise_px=(0.0,), log=lambda *_: None)
  for num_views in (2, 3):
    entry = summary["results"]["lambda=10"][f"V={num_views}"]
    for method in ("single", "joint", "joint_prior_per_view"):
      assert np.isfinite(entry[method]["identity_face"]["mean"])
      assert np.isfinite(entry[method]["nme"]["mean"])
  assert (tmp_path / "out" / "summary.json").is_file()
