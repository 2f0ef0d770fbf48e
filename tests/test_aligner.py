"""The public API (dff_jax/aligner.py): ``Aligner.load`` / ``align`` on tiny images with one face,
two faces and none, the input forms and errors, and the pure function ``align_faces`` (the same
answer as ``Aligner.align`` on a pixel-aligned crop, jit == no jit, gradients that match finite
differences).

Most tests use a tiny random DFF encoder (4-d descriptors, random weights, written as a bundle
without training) and a cascade with small random regressors, so that the landmarks depend on the
pixels and on the box (a mix-up of faces would show) while everything compiles in seconds. The
faces are synthetic renders (data_pipeline.faces.FaceSource, 128 px), which the shipped detector
finds. One test runs the shipped default on the demo portrait and a face-free image.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, write_random_bundle

CROP = 32
SIZE = 128
# No LLVM optimisation for the test's own programs: they compile in seconds instead of tens of
# seconds on 2 cores (same numbers up to float rounding).
FAST_COMPILE = {"xla_backend_optimization_level": 0}
PORTRAIT = ROOT / "experiments" / "assets" / "astronaut.jpg"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """Three renders (two with a detectable face), a tiny random encoder bundle and a random
  cascade for it."""
  from data_pipeline import faces as faces_lib
  from data_pipeline.config import pipeline_config_from_dict
  from dff_jax.alignment import cascade, io as cascade_io
  from dff_jax.face_model import load_face_model
  from dff_jax.benchmarking import align as benchmark_align

  root = tmp_path_factory.mktemp("aligner")
  bundle = write_random_bundle(root / "bundle", CROP)
  config = cascade.CascadeConfig(num_stages=2, crop_size=CROP)
  pose = benchmark_align.centred_initial_pose(load_face_model("default"), CROP)
  cascade_params = benchmark_align.random_cascade_params(jax.random.key(7), 2, 4, pose)
  path = cascade_io.save_cascade(root / "cascade_dff.npz", cascade_params, config,
                                 dict(features="dff", descriptor_dim=4, face_model="default"),
                                 compact=False)
  source = faces_lib.FaceSource(pipeline_config_from_dict(
      dict(image_size=SIZE, num_views=2, num_correspondences=16), seed=123), num_examples=2)
  faces = [source[0]["image"], source[1]["image"]]
  return dict(cascade=path, bundle=bundle, faces=faces)


@pytest.fixture(scope="module")
def aligner(env):
  from dff_jax import Aligner
  return Aligner.load(cascade=env["cascade"], checkpoint=env["bundle"], batch_size=4)


def _face_free():
  from dff_jax.evaluation import detection as evaluation
  return evaluation.face_free_image(1, size=SIZE)[0]  # "flat" (+ a little noise)


def test_one_face_two_faces_and_none(env, aligner, monkeypatch):
  from dff_jax import Aligner, Face, Pose, detection
  one = env["faces"][0]
  two = np.concatenate(env["faces"], axis=1)  # 128 x 256: two people side by side
  none = _face_free()
  result = aligner.align([one, two, none])
  assert [len(faces) for faces in result] == [1, 2, 0]
  for image, faces in zip((one, two), result):
    boxes, scores = detection.detect_faces(image)
    np.testing.assert_allclose([f.box for f in faces], boxes, atol=1e-4)
    np.testing.assert_allclose([f.score for f in faces], scores, atol=1e-6)
    assert [f.score for f in faces] == sorted([f.score for f in faces], reverse=True)
  # The two faces of the side-by-side image are in different halves.
  centres = sorted(float(f.box[0] + f.box[2]) / 2 for f in result[1])
  assert centres[0] < SIZE < centres[1]
  model = aligner.face_model
  for face in result[0] + result[1]:
    assert isinstance(face, Face) and isinstance(face.pose, Pose)
    assert face.landmarks_px.shape == face.landmarks_3d_px.shape == (68, 2)
    assert face.landmarks_px.dtype == np.float32 and face.visibility.dtype == bool
    assert face.shape_coefficients.shape == (model.num_identity,)
    assert face.expression_coefficients.shape == (model.num_expression,)
    assert face.box.shape == face.crop_box.shape == (4,) and 0.6 <= face.score <= 1.0
    assert face.is_finite() and face.pose.translation_px.shape == (2,)
    document = face.to_json()
    assert json.loads(json.dumps(document)) == document
  # Each face of the two-face image is what aligning it alone with its box gives (the batch,
  # its padding and the order of the crops change nothing): the first pass from the detector's
  # box (refine=0), then the second from the box of the first pass's landmarks (refine=1, every
  # pass run whatever the crop's change).
  from dff_jax.alignment import streaming
  monkeypatch.setattr(streaming, "REFINE_MIN_CHANGE", 0.0)
  once = Aligner(aligner.cascade, batch_size=aligner.batch_size, refine=0)
  first = once.align([two])[0]
  twice = Aligner(aligner.cascade, batch_size=aligner.batch_size, refine=1).align([two])[0]
  assert len(first) == len(result[1]) == len(twice)
  for face, start in zip(twice, first):
    np.testing.assert_allclose(start.box, face.box)
    alone = aligner.align([two], boxes=[face.box], box_convention="landmarks")[0]
    assert len(alone) == 1 and alone[0].score is None
    np.testing.assert_allclose(alone[0].landmarks_px, start.landmarks_px, atol=1e-3)
    np.testing.assert_allclose(alone[0].shape_coefficients, start.shape_coefficients, atol=1e-3)
    points = start.landmarks_px
    again = aligner.align([two], boxes=[np.concatenate([points.min(0), points.max(0)])],
                          box_convention="landmarks")[0][0]
    np.testing.assert_allclose(again.landmarks_px, face.landmarks_px, atol=1e-3)
    np.testing.assert_allclose(again.crop_box, face.crop_box, atol=1e-3)
  # The right half's face shifted back is the second render's face, aligned on its own.
  right = max(first, key=lambda f: f.box[0])
  shifted = aligner.align([env["faces"][1]], boxes=[right.box - [SIZE, 0, SIZE, 0]],
                          box_convention="landmarks")[0][0]
  np.testing.assert_allclose(shifted.landmarks_px + [SIZE, 0], right.landmarks_px, atol=2e-2)


def test_input_forms_boxes_and_errors(env, aligner):
  from dff_jax import Aligner
  one = env["faces"][0]
  single = aligner.align(one)  # one [H, W, 3] array: one image
  batch = aligner.align(np.stack([one, one]))  # [B, H, W, 3]
  assert len(single) == 1 and len(batch) == 2
  np.testing.assert_allclose(batch[1][0].landmarks_px, single[0][0].landmarks_px, atol=1e-4)
  box = single[0][0].box
  result = aligner.align([one, one, one, one, one],
                         boxes=[None, "detect", box, [box, box + 3], []],
                         box_convention="landmarks")
  assert [len(faces) for faces in result] == [1, 1, 1, 2, 0]
  assert result[0][0].score == result[1][0].score == single[0][0].score
  np.testing.assert_allclose(result[1][0].landmarks_px, single[0][0].landmarks_px, atol=1e-4)
  assert result[2][0].score is None  # a given landmark box: one pass, as a detection with refine=0
  once = Aligner(aligner.cascade, batch_size=aligner.batch_size, refine=0)
  np.testing.assert_allclose(result[2][0].landmarks_px, once.align(one)[0][0].landmarks_px,
                             atol=1e-4)
  np.testing.assert_allclose(result[3][1].box, box + 3)
  whole = aligner.align([one], boxes=["whole"])[0][0]  # the crop is given: one pass
  np.testing.assert_allclose(whole.crop_box, [0, 0, SIZE, SIZE], atol=1e-4)
  assert aligner.align([_face_free()]) == [[]]
  with pytest.raises(ValueError, match="2 box entries for 1 images"):
    aligner.align([one], boxes=[box, box])
  with pytest.raises(ValueError, match=r"4 box entries for 1 images.*boxes=\[\[x0"):
    aligner.align([one], boxes=[float(v) for v in box])  # one box, not wrapped
  with pytest.raises(ValueError, match=r"one entry per image; pass \['whole'\] \* 1"):
    aligner.align([one], boxes="whole")
  assert len(aligner.align([one], boxes=(b for b in [box]))[0]) == 1  # any iterable
  with pytest.raises(ValueError, match="box .*mostly outside the 128x128 image"):
    aligner.align([one], boxes=[[-400, -400, 1, 1]])
  for bad in (float("nan"), 2.0, -1.0):
    with pytest.raises(ValueError, match="min_score must be a detector score in \\(0, 1\\]"):
      Aligner(aligner.cascade, min_score=bad)
  with pytest.raises(ValueError, match="upsample must be 1 .* or 2"):
    Aligner(aligner.cascade, upsample=0)
  with pytest.raises(ValueError, match="image 1: .*uint8"):
    aligner.align([one, one.astype(np.float32)])
  with pytest.raises(ValueError, match=r"image 0: .*got shape \(64, 64, 2\)"):
    aligner.align([one[:64, :64, :2]])
  with pytest.raises(ValueError, match="image 0: .*outside"):
    aligner.align([one], boxes=[[500, 500, 600, 600]])
  with pytest.raises(ValueError, match="unknown face box"):
    aligner.align([one], boxes=["everything"])
  assert "batch_size=4" in repr(aligner) and aligner.features == "dff"


def test_aligner_takes_grey_and_rgba_arrays(env, aligner):
  """A grey array is the RGB image with three equal channels; an opaque RGBA array is its RGB
  image; a fully transparent one is white (no face)."""
  one = env["faces"][0]
  grey = np.round(one.mean(axis=-1)).astype(np.uint8)
  box = aligner.align(one)[0][0].box
  expected = aligner.align([np.repeat(grey[..., None], 3, axis=-1)], boxes=[box])[0][0]
  for image in (grey, grey[..., None]):
    got = aligner.align([image], boxes=[box])[0][0]
    np.testing.assert_array_equal(got.landmarks_px, expected.landmarks_px)
  assert len(aligner.align(grey)) == 1  # one [H, W] array is one image
  opaque = np.concatenate([one, np.full(one.shape[:2] + (1,), 255, np.uint8)], axis=-1)
  np.testing.assert_array_equal(aligner.align(opaque, boxes=[box])[0][0].landmarks_px,
                                aligner.align(one, boxes=[box])[0][0].landmarks_px)
  assert aligner.align([np.zeros_like(opaque)]) == [[]]


def test_align_faces_refuses_bad_arguments_in_one_line(env, aligner):
  """Shapes are checked before anything runs (under jit too), and concrete values for NaN and
  for pixels scaled to [0, 1]; each error says what to pass."""
  from dff_jax import align_faces
  image = np.asarray(env["faces"][0], np.float32)
  box = np.array([32.0, 32.0, 96.0, 96.0], np.float32)
  good = dict(encoder_params=aligner.encoder_params, cascade_params=aligner.cascade_params,
              images=image[None], boxes=box[None])
  cases = [(dict(images=image), "images must be \\[B, H, W, 3\\].*images\\[None\\]"),
           (dict(images=np.concatenate([image, image[..., :1]], -1)[None]), "alpha"),
           (dict(images=image[None, ..., 0]), "got shape \\(1, 128, 128\\)"),
           (dict(boxes=box), "boxes must be \\[B, 4\\] = \\[1, 4\\].*got shape \\(4,\\)"),
           (dict(boxes=np.stack([box, box])), "got shape \\(2, 4\\)"),
           (dict(boxes=np.concatenate([box, [0.0]])[None]), "got shape \\(1, 5\\)"),
           (dict(encoder_params=None), "encoder_params is None"),
           (dict(boxes=np.where(np.arange(4) == 2, np.nan, box)[None]), "NaN"),
           (dict(images=np.where(image > 100, np.nan, image)[None]), "NaN"),
           (dict(images=image[None] / 255.0), "scaled to \\[0, 1\\].*\\[0, 255\\]")]
  for change, message in cases:
    with pytest.raises(ValueError, match="align_faces: .*" + message):
      align_faces(**dict(good, **change), aligner=aligner)
  with pytest.raises(ValueError, match="boxes must be"):  # shapes are static under jit
    jax.jit(align_faces, static_argnames=("aligner", "remat"))(**dict(good, boxes=box),
                                                               aligner=aligner)


def test_align_faces_is_the_aligner_and_differentiable(env, aligner):
  """On a pixel-aligned crop box of 2 * crop_size pixels the host crop is a pixel copy, so the
  pure function gives Aligner.align's answer; jit == no jit; gradients match finite differences."""
  from dff_jax import align_faces
  image = env["faces"][0]
  side = 2 * CROP / aligner.config.box_scale  # the crop box is [32, 32, 96, 96]
  box = np.array([64 - side / 2, 64 - side / 2, 64 + side / 2, 64 + side / 2], np.float32)
  face = aligner.align([image], boxes=[box], box_convention="landmarks")[0][0]
  np.testing.assert_allclose(face.crop_box, [32, 32, 96, 96], atol=1e-4)
  images = jnp.asarray(image[None], jnp.float32)
  boxes = jnp.asarray(box[None])
  result = align_faces(aligner.encoder_params, aligner.cascade_params, images, boxes,
                       aligner=aligner)
  np.testing.assert_allclose(result.landmarks_px[0], face.landmarks_px, atol=2e-3)
  np.testing.assert_allclose(result.landmarks_3d_px[0], face.landmarks_3d_px, atol=2e-3)
  np.testing.assert_allclose(result.yaw_rad[0], face.pose.yaw_rad, atol=1e-4)
  np.testing.assert_allclose(result.scale[0], face.pose.scale, rtol=1e-4)
  jitted = jax.jit(align_faces, static_argnames=("aligner", "remat"),
                   compiler_options=FAST_COMPILE)
  again = jitted(aligner.encoder_params, aligner.cascade_params, images, boxes, aligner=aligner)
  np.testing.assert_allclose(again.landmarks_px, result.landmarks_px, atol=1e-3)

  target = result.landmarks_px + 1.5

  def loss(encoder_params, cascade_params, images):
    out = align_faces(encoder_params, cascade_params, images, boxes, aligner=aligner,
                      remat=True)
    return jnp.mean(jnp.sum((out.landmarks_px - target) ** 2, axis=-1))

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), compiler_options=FAST_COMPILE)(
      aligner.encoder_params, aligner.cascade_params, images)
  for grad in jax.tree.leaves(grads):
    assert np.all(np.isfinite(grad))
  assert float(jnp.abs(grads[2]).max()) > 0  # the pixels matter
  assert float(jnp.abs(grads[1].landmark_weights).max()) > 0
  # Directional derivatives against central differences (float64 would be exact; float32 and
  # the piecewise-smooth sampling leave a few per cent).
  rng = np.random.default_rng(0)
  value = jax.jit(loss, compiler_options=FAST_COMPILE)
  direction = rng.normal(size=image.shape).astype(np.float32)[None]
  epsilon = 0.5
  numeric = (value(aligner.encoder_params, aligner.cascade_params, images + epsilon * direction)
             - value(aligner.encoder_params, aligner.cascade_params,
                     images - epsilon * direction)) / (2 * epsilon)
  analytic = float(jnp.sum(grads[2] * direction))
  assert analytic == pytest.approx(float(numeric), rel=0.1, abs=1e-3)
  leaves, tree = jax.tree.flatten(aligner.encoder_params)
  steps = [jnp.asarray(rng.normal(size=l.shape), jnp.float32) for l in leaves]
  epsilon = 1e-3
  shifted = [jax.tree.unflatten(tree, [l + sign * epsilon * d for l, d in zip(leaves, steps)])
             for sign in (1, -1)]
  numeric = (value(shifted[0], aligner.cascade_params, images)
             - value(shifted[1], aligner.cascade_params, images)) / (2 * epsilon)
  analytic = sum(float(jnp.sum(g * d)) for g, d in zip(jax.tree.leaves(grads[0]), steps))
  assert analytic == pytest.approx(float(numeric), rel=0.1, abs=1e-3)


def test_shipped_default_on_the_portrait_and_a_face_free_image():
  """Aligner.load() (the shipped cascade and encoder): the demo portrait has one face, found
  without a box and aligned onto the hand-placed reference points; a face-free image has none."""
  from dff_jax import Aligner, demo, image_io
  portrait = image_io.read_image(PORTRAIT)
  aligner = Aligner.load()
  result = aligner.align([portrait, _face_free()])
  assert len(result[0]) == 1 and result[1] == []
  face = result[0][0]
  assert face.score > 0.8
  stored = np.asarray(json.loads(PORTRAIT.with_suffix(".json").read_text())["box"])
  centre = (face.box[:2] + face.box[2:]) / 2
  assert np.linalg.norm(centre - (stored[:2] + stored[2:]) / 2) < 10
  errors = demo.reference_point_errors_px(face.landmarks_px)
  assert max(errors.values()) < 6.0, errors
  assert abs(face.pose.yaw_deg) < 15 and abs(face.pose.roll_deg) < 10


def test_benchmark_aligner_smoke(env):
  from dff_jax.benchmarking import aligner as benchmark_aligner
  images = [env["faces"][0], _face_free()]
  records = list(benchmark_aligner.bench_aligner(images, str(env["cascade"]), batch_size=2,
                                                 repeats=1, checkpoint=str(env["bundle"])))
  assert [r["mode"] for r in records] == ["detect_only", "align_detect", "align_detect_one_pass",
                                          "align_given_boxes", "align_one_per_call"]
  for record in records:
    assert record["images"] == 2 and record["faces"] == 1 and record["ms_per_image"] > 0
    assert json.loads(json.dumps(record)) == record


_THREADS_SCRIPT = r"""
import sys, threading
import numpy as np
from dff_jax import Aligner
cascade, bundle, faces = sys.argv[1:4]
images = list(np.load(faces)["images"])
boxes = [[20.0, 20.0, 108.0, 108.0]] * len(images)
aligner = Aligner.load(cascade=cascade, checkpoint=bundle, batch_size=2)
expected = [f.landmarks_px for faces_ in aligner.align(images, boxes) for f in faces_]
results = {}
def work(k):
  for _ in range(3):
    results[k] = [f.landmarks_px for faces_ in aligner.align(images, boxes) for f in faces_]
threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(2)]
for t in threads: t.start()
for t in threads: t.join(timeout=120)
print("finished", sorted(results), flush=True)
same = all(np.array_equal(a, b) for k in results for a, b in zip(results[k], expected))
print("same" if same and len(results) == 2 else "different", flush=True)
import os; os._exit(0)
"""


def test_two_threads_share_an_aligner(env, tmp_path):
  """Two threads aligning at once with one aligner both finish, each with the one-thread answer.
  Before ``runner.EXECUTION_LOCK`` both hung for good on XLA:CPU (2 cores); the threads run in a
  subprocess so that a hang fails this test instead of stalling the suite."""
  import subprocess
  import sys
  faces = tmp_path / "faces.npz"
  np.savez(faces, images=np.stack(env["faces"] * 3))
  proc = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, str(env["cascade"]),
                         str(env["bundle"]), str(faces)], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split("\n")[:2] == ["finished [0, 1]", "same"], proc.stdout
