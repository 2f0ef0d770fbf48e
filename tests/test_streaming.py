"""Streaming alignment of large collections: dff_jax.alignment.streaming.run_jobs (worker threads,
prefetch, asynchronous dispatch, bounded memory) and experiments.align (writer threads, summary).

The cascade is built without training: SIFT descriptors, 2 stages, crop 32, **small random
regressors** (dff_jax.benchmarking.align.random_cascade_params), so that the landmarks depend on
the image content and on the face box (a mix-up of images or results between faces would show).
The images are small random smooth pictures of different sizes with per-image boxes.
"""

import json
import os
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

CROP = 32
NUM_GOOD = 18
BAD = ("broken.jpg", "truncated.jpg")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """A folder of 18 good images + 2 bad ones with a boxes file, and a random SIFT cascade."""
  import jax
  from dff_jax.alignment import cascade, io as cascade_io
  from dff_jax.face_model import load_face_model
  from dff_jax.benchmarking import align as benchmark_align

  root = tmp_path_factory.mktemp("streaming")
  config = cascade.CascadeConfig(num_stages=2, crop_size=CROP)
  pose = benchmark_align.centred_initial_pose(load_face_model("default"), CROP)
  params = benchmark_align.random_cascade_params(jax.random.key(3), 2, 128, pose)
  cascade_path = cascade_io.save_cascade(root / "cascade_sift.npz", params, config,
                                         dict(features="sift", descriptor_dim=128,
                                              face_model="default"))
  folder = root / "images"
  folder.mkdir()
  rng = np.random.default_rng(0)
  boxes = {}
  for i in range(NUM_GOOD):
    height, width = 40 + 3 * i, 60 - i
    small = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    name = f"img{i:02d}." + ("png" if i % 3 == 0 else "jpg")
    image.save(folder / name, **({} if name.endswith("png") else {"quality": 90}))
    side = rng.uniform(0.5, 0.8) * min(height, width)
    x0, y0 = rng.uniform(0, width - side), rng.uniform(0, height - side)
    boxes[name] = [x0, y0, x0 + side, y0 + side]
  (folder / BAD[0]).write_text("this is not a JPEG\n")
  full = root / "full.jpg"
  Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(full, quality=90)
  data = full.read_bytes()
  (folder / BAD[1]).write_bytes(data[:len(data) // 2])
  for name in BAD:
    boxes[name] = [0, 0, 20, 20]
  boxes_path = root / "boxes.json"
  boxes_path.write_text(json.dumps(boxes))
  good = sorted(n for n in boxes if n not in BAD)
  return dict(root=root, folder=folder, boxes=boxes_path, box_map=boxes, good=good,
              cascade=cascade_path)


def _align(env, out, **kwargs):
  from dff_jax.alignment import files
  messages = []
  summary = files.align_files(str(env["folder"]), out, boxes=str(env["boxes"]),
                              cascade=str(env["cascade"]), batch_size=8, progress=False,
                              report=messages.append, **kwargs)
  return summary, messages


def test_streamed_outputs_match_the_unthreaded_path(env, tmp_path):
  from dff_jax.alignment import runner
  aligner = runner.load_aligner(runner.resolve_aligner(str(env["cascade"])))  # cached: reused
  compiled_before = set(aligner.compile_seconds)
  threaded, messages = _align(env, tmp_path / "threaded", workers=2, writers=2,
                              prefetch_batches=1)
  plain, plain_messages = _align(env, tmp_path / "plain", workers=0, writers=0)
  stems = [n.rsplit(".", 1)[0] for n in env["good"]]
  for summary, lines in ((threaded, messages), (plain, plain_messages)):
    assert summary["written"] == stems  # input order
    assert summary["images"] == NUM_GOOD + 2 and summary["failures"] == 2
    assert len(lines) == 2 and all("\n" not in l for l in lines)
    for name in BAD:
      assert len([l for l in lines if name in l]) == 1, lines
    assert summary["images_per_second"] > 0 and summary["wall_s"] > 0
  expected = sorted([f"{s}.json" for s in stems] + [f"{s}_overlay.png" for s in stems])
  assert sorted(p.name for p in (tmp_path / "threaded").iterdir()) == expected
  assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == expected
  landmarks = []
  for stem, name in zip(stems, env["good"]):
    a = json.loads((tmp_path / "threaded" / f"{stem}.json").read_text())
    b = json.loads((tmp_path / "plain" / f"{stem}.json").read_text())
    assert a == b and len(a["faces"]) == 1
    a = a["faces"][0]
    np.testing.assert_allclose(a["box"], env["box_map"][name], atol=1e-3)
    assert ((tmp_path / "threaded" / f"{stem}_overlay.png").read_bytes()
            == (tmp_path / "plain" / f"{stem}_overlay.png").read_bytes())
    landmarks.append(np.asarray(a["landmarks_px"]))
  # The landmarks depend on each face (no two faces share a result).
  assert len({l.round(2).tobytes() for l in landmarks}) == NUM_GOOD
  # One compiled program for both runs (batches 8, 8 and a padded 2), by the same aligner.
  assert runner.load_aligner(runner.resolve_aligner(str(env["cascade"]))) is aligner
  assert set(aligner.compile_seconds) - compiled_before <= {8} and 8 in aligner.compile_seconds


def test_run_jobs_matches_one_face_at_a_time(env):
  """Batching, padding and threads give each face the result of aligning it alone."""
  from dff_jax import image_io
  from dff_jax.alignment import runner
  from dff_jax.alignment import streaming
  aligner = runner.load_aligner(runner.resolve_aligner(str(env["cascade"])))

  def job(name):
    return streaming.Job(name=name, load=lambda: streaming.Loaded(
        image=image_io.read_image(env["folder"] / name), box=env["box_map"][name]))

  names = env["good"][:5]
  outcomes = list(streaming.run_jobs(aligner, [job(n) for n in names], batch_size=8,
                                     progress=False, workers=2))
  assert [o.job.name for o in outcomes] == names
  for name, outcome in zip(names, outcomes):
    alone = next(streaming.run_jobs(aligner, [job(name)], batch_size=8, progress=False, workers=0))
    np.testing.assert_allclose(outcome.face.landmarks_px, alone.face.landmarks_px, atol=1e-4)


@pytest.mark.parametrize("workers", [0, 2])
def test_run_jobs_bounds_images_in_memory(env, workers):
  """A long lazy job stream: the images loaded and not yet yielded stay below
  (prefetch_batches + 2) * batch_size, the input is pulled lazily, order is kept."""
  from dff_jax.alignment import runner
  from dff_jax.alignment import streaming
  aligner = runner.load_aligner(runner.resolve_aligner(str(env["cascade"])))
  batch_size, prefetch, num_jobs = 4, 1, 60
  bound = (prefetch + 2) * batch_size
  lock = threading.Lock()
  counts = dict(pulled=0, loaded=0, received=0, max_in_memory=0)
  rng = np.random.default_rng(1)
  images = [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(8)]

  def load(i):
    with lock:
      counts["loaded"] += 1
      counts["max_in_memory"] = max(counts["max_in_memory"],
                                    counts["loaded"] - counts["received"])
    if i == 13:
      raise ValueError(f"job{i}: bad box")
    return streaming.Loaded(image=images[i % len(images)], box=[2.0, 2.0, 20.0, 20.0 + i % 3])

  def jobs():
    for i in range(num_jobs):
      counts["pulled"] += 1
      yield streaming.Job(name=f"job{i}", load=lambda i=i: load(i))

  stats = streaming.RunStats()
  names, pulled_at_first = [], None
  for outcome in streaming.run_jobs(aligner, jobs(), batch_size=batch_size, progress=False,
                                    workers=workers, prefetch_batches=prefetch, stats=stats):
    if pulled_at_first is None:
      pulled_at_first = counts["pulled"]
    time.sleep(0.002)  # a slow consumer: the workers must not run ahead
    with lock:
      counts["received"] += 1
    names.append(outcome.job.name)
    assert (outcome.error is not None) == (outcome.job.name == "job13")
  good = [f"job{i}" for i in range(num_jobs) if i != 13]
  assert [n for n in names if n != "job13"] == good  # order of good jobs kept
  assert counts["max_in_memory"] <= bound, counts
  assert stats.max_in_memory <= bound and stats.in_memory == 0
  assert pulled_at_first <= bound + 1  # the input is consumed lazily
  assert stats.jobs == num_jobs and stats.faces == num_jobs - 1 and stats.failures == 1
  assert stats.batches == -(-(num_jobs - 1) // batch_size)
  if workers:
    assert counts["max_in_memory"] > batch_size  # decoding ran ahead of the batch in flight
  assert 4 in aligner.compile_seconds  # one program for batches of 4 (the last padded)


class _PlantedCascade:
  """A stand-in for a compiled cascade whose answer is planted: every face's landmarks are the
  same points in working pixels (a box from 0.3 to 0.7 of the working side), whatever the image;
  it records the batch size of each call."""

  name = "planted"
  channels = 3
  work_size = 64

  def __init__(self, box_scale: float = 1.25):
    from dff_jax.alignment import cascade
    self.config = cascade.CascadeConfig(num_stages=1, crop_size=32, box_scale=box_scale)
    t = np.linspace(0.0, 1.0, 68, dtype=np.float32)
    corner = np.stack([0.3 + 0.4 * t, 0.3 + 0.4 * (t ** 2)], axis=1)  # spans [0.3, 0.7]^2
    self.points = corner * self.work_size
    self.calls = []

  def dispatch(self, work_images):
    self.calls.append(len(work_images))
    return len(work_images)

  def fetch(self, count):
    zeros = np.zeros((count,), np.float32)
    return dict(landmarks_px=np.repeat(self.points[None], count, 0),
                landmarks_3d_px=np.repeat(self.points[None], count, 0),
                visibility=np.ones((count, 68), np.float32), yaw_rad=zeros, pitch_rad=zeros,
                roll_rad=zeros, scale=zeros + 1, translation_px=np.zeros((count, 2), np.float32),
                shape_coefficients=np.zeros((count, 3), np.float32),
                expression_coefficients=np.zeros((count, 2), np.float32))


def _planted_image_frame(box, box_scale, work_size, points):
  """Where the planted working-frame points land in the image for a face box (by hand: the
  square crop of side ``box_scale * max(w, h)`` centred on the box, scaled to ``work_size``)."""
  centre = (np.asarray(box[:2]) + np.asarray(box[2:])) / 2
  side = box_scale * max(box[2] - box[0], box[3] - box[1])
  return centre - side / 2 + points * side / work_size


@pytest.mark.parametrize("passes", [0, 1, 2])
def test_detected_faces_are_refined_from_their_own_landmark_box(passes):
  """Planted truth: a stand-in cascade answers the same working-frame points for every crop.
  A detected face is aligned 1 + ``refine`` times, each pass from the bounding box of the
  previous pass's landmarks (worked out by hand here), keeping the detector's box and score;
  a given box is aligned once; outcomes still arrive for every job."""
  from dff_jax.alignment import streaming
  from dff_jax import geometry
  planted = _PlantedCascade()
  detected = np.array([[40.0, 30.0, 100.0, 110.0], [120.0, 20.0, 150.0, 50.0]], np.float32)

  def detect(image):
    return detected, np.array([0.9, 0.8], np.float32)

  image = np.full((160, 200, 3), 90, np.uint8)
  jobs = [streaming.Job(name="detected", load=lambda: streaming.Loaded(image=image)),
          streaming.Job(name="given", load=lambda: streaming.Loaded(
              image=image, box=[10.0, 10.0, 50.0, 60.0]))]
  outcomes = {o.job.name: o for o in streaming.run_jobs(
      planted, jobs, batch_size=3, progress=False, workers=0, detect=detect, refine=passes)}
  # The first batch holds all three faces, each later one the two detected faces again.
  assert planted.calls == [3] * (1 + passes)
  assert len(outcomes["detected"].faces) == 2 and len(outcomes["given"].faces) == 1
  for face, box, score in zip(outcomes["detected"].faces, detected, (0.9, 0.8)):
    expected = _planted_image_frame(box, 1.25, 64, planted.points)
    for _ in range(passes):
      start = np.concatenate([expected.min(0), expected.max(0)])
      expected = _planted_image_frame(start, 1.25, 64, planted.points)
    np.testing.assert_allclose(face.landmarks_px, expected, atol=1e-3)
    np.testing.assert_allclose(face.box, box)  # the box it started from stays reported
    assert face.score == pytest.approx(score)
    np.testing.assert_allclose(face.crop_box, geometry.square_box(start if passes else box, 1.25),
                               atol=1e-3)
  given = outcomes["given"].face
  np.testing.assert_allclose(given.landmarks_px, _planted_image_frame(
      [10.0, 10.0, 50.0, 60.0], 1.25, 64, planted.points), atol=1e-3)


def _refined(box, passes, points):
  """The planted cascade's image-frame points after 1 + ``passes`` passes from ``box`` (each
  pass from the bounding box of the previous one's points), by hand."""
  expected = _planted_image_frame(box, 1.25, 64, points)
  for _ in range(passes):
    expected = _planted_image_frame(np.concatenate([expected.min(0), expected.max(0)]), 1.25,
                                    64, points)
  return expected


@pytest.mark.parametrize("box_convention", ["detector", "landmarks"])
def test_aligner_refines_detected_faces_and_detector_boxes(box_convention):
  """``dff_jax.Aligner`` (planted stand-in cascade and detector): a face it finds gets
  1 + ``refine`` passes; a given box gets as many when it is a detector's box
  (``box_convention="detector"``, the default) and one when it is a landmark box. Every face
  keeps the box it started from."""
  from dff_jax import Aligner
  image = np.full((160, 200, 3), 90, np.uint8)
  detected = np.array([[40.0, 30.0, 100.0, 110.0]], np.float32)
  given_box = [10.0, 10.0, 50.0, 60.0]
  for passes in (0, 1, 2):
    planted = _PlantedCascade()
    aligner = Aligner(planted, batch_size=2, refine=passes,
                      detect=lambda im: (detected, np.array([0.9], np.float32)))
    found, given = aligner.align([image, image], boxes=[None, given_box],
                                 box_convention=box_convention)
    np.testing.assert_allclose(found[0].landmarks_px, _refined(detected[0], passes,
                                                               planted.points), atol=1e-3)
    np.testing.assert_allclose(found[0].box, detected[0])
    given_passes = passes if box_convention == "detector" else 0
    np.testing.assert_allclose(given[0].landmarks_px, _refined(given_box, given_passes,
                                                               planted.points), atol=1e-3)
    np.testing.assert_allclose(given[0].box, given_box)
    assert planted.calls == [2] * (1 + passes)  # fixed-size batches (the last ones padded)
  with pytest.raises(ValueError, match="refine"):
    Aligner(planted, refine=-1)
  with pytest.raises(ValueError, match="box_convention"):
    aligner.align([image], boxes=[given_box], box_convention="dlib")


def test_refinement_per_job_and_degenerate_boxes():
  """``Loaded.refine`` asks for passes on a given box; a pass whose landmark box lies outside
  the image is not run (the face keeps its last result)."""
  from dff_jax.alignment import streaming
  planted = _PlantedCascade()
  image = np.zeros((100, 100, 3), np.uint8)
  job = streaming.Job(name="given", load=lambda: streaming.Loaded(
      image=image, box=[20.0, 20.0, 60.0, 60.0], refine=1))
  outcome = next(streaming.run_jobs(planted, [job], batch_size=1, progress=False, workers=0))
  assert planted.calls == [1, 1]
  first = _planted_image_frame([20.0, 20.0, 60.0, 60.0], 1.25, 64, planted.points)
  np.testing.assert_allclose(outcome.face.landmarks_px, _planted_image_frame(
      np.concatenate([first.min(0), first.max(0)]), 1.25, 64, planted.points), atol=1e-3)
  import dataclasses
  outside = dataclasses.replace(outcome.face, landmarks_px=outcome.face.landmarks_px + 500.0)
  assert streaming.refined_box(outside, 100, 100) is None  # its box is outside the image
  assert streaming.refined_box(outcome.face, 100, 100) is not None
  with pytest.raises(ValueError, match="refine"):
    list(streaming.run_jobs(planted, [], progress=False, refine=-1))


def test_run_jobs_rejects_bad_settings(env):
  from dff_jax.alignment import runner
  from dff_jax.alignment import streaming
  aligner = runner.load_aligner(runner.resolve_aligner(str(env["cascade"])))
  for kwargs in (dict(batch_size=0), dict(workers=-1), dict(prefetch_batches=0)):
    with pytest.raises(ValueError):
      list(streaming.run_jobs(aligner, [], progress=False, **kwargs))


def test_align_command_summary_and_no_overlays(env, tmp_path):
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.align", f"--images={env['folder']}",
       f"--boxes={env['boxes']}", f"--cascade={env['cascade']}", "--batch_size=8",
       "--overlays=false", "--run_summary", f"--out_dir={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert json.loads(lines[-1]) == {"out_dir": str(out), "written": NUM_GOOD, "failed": 2,
                                  "faces": NUM_GOOD}
  assert lines[-2].startswith(f"align: {NUM_GOOD + 2} images, {NUM_GOOD} written, 2 failed")
  assert "images/s" in lines[-2]
  skipped = [l for l in proc.stderr.splitlines() if "align: skipped" in l]
  assert len(skipped) == 2
  summary = json.loads((out / "run_summary.json").read_text())
  assert summary["images"] == NUM_GOOD + 2 and summary["failures"] == 2
  assert summary["images_per_second"] > 0 and summary["overlays"] is False
  assert {"wall_s", "compile_s", "decode_s", "align_s", "write_s"} <= set(summary)
  names = sorted(p.name for p in out.iterdir())
  assert names == sorted([f"{n.rsplit('.', 1)[0]}.json" for n in env["good"]]
                         + ["run_summary.json"])


def test_benchmark_stream_smoke(env, tmp_path, monkeypatch):
  """The stream benchmark on 5 rendered faces (cached: a second call renders nothing)."""
  from dff_jax.benchmarking import stream as benchmark_stream
  monkeypatch.setitem(sys.modules, "dlib", None)  # dlib is optional: none here
  messages = []
  kwargs = dict(data_dir=str(tmp_path / "data"), num_images=5, image_size=64, batch_size=4,
                cascade=str(env["cascade"]), overlays=(False, True), report=messages.append)
  records = list(benchmark_stream.bench_stream(**kwargs))
  assert [r["mode"] for r in records] == ["jitted_call", "jitted_call_describe_all_first",
                                          "end_to_end", "end_to_end"]
  for record in records:
    assert {"what", "batch_size", "items_per_second", "compile_s", "loadavg"} <= set(record)
    assert record["what"] == "align_stream" and record["items_per_second"] > 0
    json.dumps(record)
  previous = records[1]
  assert previous["passes"] == 3 and previous["ratio_to_jitted_call"] == pytest.approx(
      previous["items_per_second"] / records[0]["items_per_second"], rel=1e-2)
  stream = records[2]
  assert stream["failures"] == 0 and stream["overlays"] is False and records[3]["overlays"]
  assert {"decode_s", "align_s", "write_s", "rss_mb_peak", "ratio_to_jitted_call"} <= set(stream)
  assert len(stream["rss_mb_by_tenth"]) == 10
  boxes = json.loads((tmp_path / "data" / "boxes.json").read_text())
  assert sorted(boxes) == [f"face_{i:05d}.jpg" for i in range(5)]
  stamp = (tmp_path / "data" / "images" / "face_00000.jpg").stat().st_mtime_ns
  paths = benchmark_stream.make_dataset(tmp_path / "data", 3, 64)
  assert [p.name for p in paths] == [f"face_{i:05d}.jpg" for i in range(3)]
  assert (tmp_path / "data" / "images" / "face_00000.jpg").stat().st_mtime_ns == stamp


class _FakeDlib:
  """Stands in for the optional ``dlib`` module: ``rectangle``, ``shape_predictor`` (68 points
  at the rectangle's top-left corner) and ``get_frontal_face_detector``."""
  __version__ = "fake"
  calls = []

  @staticmethod
  def rectangle(x0, y0, x1, y1):
    return (x0, y0, x1, y1)

  @staticmethod
  def get_frontal_face_detector():
    return lambda image, upsample: []

  class shape_predictor:  # pylint: disable=invalid-name
    def __init__(self, path):
      self.path = path

    def __call__(self, image, rectangle):
      _FakeDlib.calls.append((image.shape, rectangle))
      point = types.SimpleNamespace(x=rectangle[0], y=rectangle[1])
      return types.SimpleNamespace(parts=lambda: [point] * 68)


def test_benchmark_stream_on_photos_with_dlib(env, tmp_path, monkeypatch):
  """A folder of photos with its boxes.json: the same boxes for the jitted call, the streaming
  run and dlib's predictor (a stand-in module: dlib is optional), which comes as a ratio."""
  from dff_jax.benchmarking import stream as benchmark_stream
  folder = tmp_path / "photos"
  folder.mkdir()
  names = env["good"][:5]
  for name in names:
    (folder / name).write_bytes((env["folder"] / name).read_bytes())
  (folder / "boxes.json").write_text(json.dumps({n: env["box_map"][n] for n in names}))
  model = tmp_path / "predictor.dat"
  model.write_bytes(b"fake")
  monkeypatch.setitem(sys.modules, "dlib", _FakeDlib)
  _FakeDlib.calls.clear()
  records = list(benchmark_stream.bench_stream(
      data_dir=str(folder), num_images=4, batch_size=4, cascade=str(env["cascade"]),
      overlays=(False,), dlib_predictor=str(model), report=lambda m: None))
  assert [r["mode"] for r in records] == ["jitted_call", "jitted_call_describe_all_first",
                                          "host_costs", "end_to_end", "dlib_predictor"]
  host = records.pop(2)  # the host's per-image work, one thread
  steps = ("decode_rgb_ms", "decode_grey_ms", "crop_rgb_ms", "crop_grey_ms",
           "write_indented_ms", "write_one_line_ms")
  assert host["num_images"] == 4 and host["channels"] == 1 and all(host[k] > 0 for k in steps)
  assert host["rgb_path_ms"] == pytest.approx(
      host["decode_rgb_ms"] + host["crop_rgb_ms"] + host["write_indented_ms"], abs=2e-3)
  assert host["grey_path_ms"] == pytest.approx(
      host["decode_grey_ms"] + host["crop_grey_ms"] + host["write_one_line_ms"], abs=2e-3)
  for record in records:
    assert record["source"] == "photos" and record["num_images"] == 4
    assert record["ms_per_item"] > 0
  dlib_record = records[3]
  assert {"ratio_to_jitted_call", "ratio_to_end_to_end"} <= set(dlib_record)
  assert len(_FakeDlib.calls) == 5  # one warm-up + the 4 faces
  box = env["box_map"][sorted(names)[0]]
  # dlib's rectangle: inclusive pixel indices of the box (image coordinates, right and bottom
  # edges exclusive).
  assert _FakeDlib.calls[0][1] == tuple(int(round(v)) for v in box[:2]) + tuple(
      int(round(v)) - 1 for v in box[2:])
  assert len(_FakeDlib.calls[0][0]) == 2  # the luma plane, decoded in the timed loop
  # Without a model file the record says why it was skipped; without dlib there is none.
  from dff_jax.evaluation import dlib_baseline
  monkeypatch.setattr(dlib_baseline, "default_predictor_path", lambda: None)
  records = list(benchmark_stream.bench_stream(
      data_dir=str(folder), num_images=2, batch_size=4, cascade=str(env["cascade"]),
      overlays=(), report=lambda m: None))
  assert records[-1]["mode"] == "dlib_predictor" and "skipped" in records[-1]
  monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
  records = list(benchmark_stream.bench_stream(
      data_dir=str(folder), num_images=2, batch_size=4, cascade=str(env["cascade"]),
      overlays=(), report=lambda m: None))
  assert [r["mode"] for r in records] == ["jitted_call", "jitted_call_describe_all_first",
                                          "host_costs"]


def test_benchmark_variants_give_the_aligners_results(env, tmp_path):
  """The stream benchmark's variants of the call align a batch as the aligner's own call does,
  on a tiny random point-head encoder of widths (4, 32, 32) (its 32 -> 32 layer is Winograd's
  under ``conv="auto"``): the per-face-head one (point fields with ``shared_head`` cleared) and
  the one with XLA's convolutions throughout. A SIFT cascade, which has neither a head nor an
  encoder, has neither variant."""
  import jax
  from conftest import write_random_bundle
  from dff_jax.alignment import cascade, io as cascade_io, runner
  from dff_jax.benchmarking import align as benchmark_align, stream as benchmark_stream
  from dff_jax.face_model import load_face_model
  bundle = write_random_bundle(tmp_path / "bundle", CROP, head="point", features=(4, 32, 32))
  pose = benchmark_align.centred_initial_pose(load_face_model("default"), CROP)
  params = benchmark_align.random_cascade_params(jax.random.key(5), 2, 4, pose)
  path = cascade_io.save_cascade(tmp_path / "cascade_dff.npz", params,
                                 cascade.CascadeConfig(num_stages=2, crop_size=CROP),
                                 dict(features="dff", descriptor_dim=4, face_model="default",
                                      descriptor_source=str(bundle)))
  aligner = runner.load_aligner(runner.resolve_aligner(path), cache=False)
  rng = np.random.default_rng(1)
  work = rng.integers(0, 256, (3, aligner.work_size, aligner.work_size, aligner.channels),
                      dtype=np.uint8)
  expected = aligner.align_working(work)
  assert np.ptp(expected["landmarks_px"][:, :, 0], axis=0).max() > 1e-3  # the faces differ
  for variant in (benchmark_stream.per_face_head, benchmark_stream.xla_convolutions):
    got = variant(aligner)(work, None)
    np.testing.assert_allclose(got["landmarks_px"], expected["landmarks_px"], atol=1e-3)
  sift = runner.load_aligner(runner.resolve_aligner(env["cascade"]), cache=False)
  assert benchmark_stream.per_face_head(sift) is None
  assert benchmark_stream.xla_convolutions(sift) is None


@pytest.mark.parametrize("spread,expected_passes", [(0.8, 1), (0.83, 1), (0.88, 3), (0.5, 3)])
def test_refinement_stops_when_the_crop_has_converged(spread, expected_passes):
  """Planted truth: a stand-in cascade whose points span ``spread`` of the working side around
  its centre, so each pass's landmark box is ``spread * box_scale`` times the box it started
  from (the same centre) and the next crop changes its side by that factor minus one. With
  spread 0.8 and box scale 1.25 the box reproduces itself, with 0.83 the next crop is 3.75 %
  larger (within the 0.05 tolerance): the first pass has converged and no refinement pass is
  run, even with ``refine=2``. With 0.88 (10 % larger each time) or 0.5 (half as large) every
  pass is run: 1 + refine. ``refine_min_change=0`` runs every pass."""
  from dff_jax.alignment import streaming
  planted = _PlantedCascade()
  t = np.linspace(0.0, 1.0, 68, dtype=np.float32)
  unit = np.stack([t, t ** 2], axis=1)  # spans [0, 1]^2
  planted.points = ((0.5 - spread / 2) + spread * unit) * planted.work_size
  image = np.zeros((200, 200, 3), np.uint8)
  box = [60.0, 60.0, 140.0, 140.0]

  def run(**kwargs):
    planted.calls.clear()
    job = streaming.Job(name="given", load=lambda: streaming.Loaded(image=image, box=box,
                                                                     refine=2))
    stats = streaming.RunStats()
    list(streaming.run_jobs(planted, [job], batch_size=1, progress=False, workers=0,
                            stats=stats, **kwargs))
    assert stats.refinement_passes == len(planted.calls) - 1
    return len(planted.calls)

  assert streaming.REFINE_MIN_CHANGE == 0.05
  assert run() == expected_passes
  assert run(refine_min_change=0.0) == 3
  crop = np.array([50.0, 50.0, 150.0, 150.0])
  assert streaming.refinement_converged(crop, [61.0, 60.0, 141.0, 140.0], 1.25, 0.05)
  assert not streaming.refinement_converged(crop, [70.0, 60.0, 150.0, 140.0], 1.25, 0.05)
  assert not streaming.refinement_converged(crop, box, 1.25, 0.0)
