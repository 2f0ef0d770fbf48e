"""Bad flag values of the evaluation and benchmark commands: one stderr line naming the flag,
non-zero exit, no traceback, nothing silently wrong, and (but for a run that scored no face,
which can only be known after it ran) no model loaded, nothing timed and nothing written.

Commands: ``experiments.eval_matching`` (exit status 1, its documented one), ``experiments.
eval_alignment`` and ``experiments.benchmark`` (exit status 2). Each case runs the command as a
subprocess with JAX on the CPU. The refusals come before any model is loaded, so each takes the
command's start-up time only (a few seconds); the one run that scores nothing uses an untrained
zero-regressor SIFT cascade (crop 64) written here and two tiny AFLW2000-3D-layout files.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_module, stderr_lines

CROP = 64


_run = run_module
_lines = stderr_lines


def _check_refused(proc, command, *words, status=None, only_line=True):
  """Non-zero exit (``status`` when given), no traceback, the (last) stderr line is
  ``<command>: error: ...`` naming ``words``; with ``only_line`` it is the only line."""
  assert proc.returncode != 0, proc.stdout + proc.stderr
  if status is not None:
    assert proc.returncode == status, proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = _lines(proc)
  assert lines, "no error message on stderr"
  if only_line:
    assert len(lines) == 1, proc.stderr
  line = lines[-1]
  print(line)  # shown by pytest -s / on failure
  assert line.startswith(f"{command}: error: "), line
  for word in words:
    assert word.lower() in line.lower(), f"{word!r} not in {line!r}"
  return line


# ----------------------------------------------------------------------------------------------
# experiments.eval_matching
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, words", [
    # faces68: every figure is over pairs of faces; 0 is not "all" (the default is).
    (["--dataset=faces68", "--num_faces=0"], ["--num_faces", ">= 2", "0"]),
    (["--dataset=faces68", "--num_faces=-1"], ["--num_faces", ">= 2", "-1"]),
    (["--dataset=faces68", "--num_faces=1"], ["--num_faces", ">= 2"]),
    (["--dataset=faces68", "--sift_cells=0"], ["--sift_cells", "0", "even"]),
    (["--dataset=faces68", "--sift_cells=4,7"], ["--sift_cells", "7", "even"]),
    (["--dataset=faces68", "--sift_cells=4,x"], ["--sift_cells", "'x'"]),
    (["--dataset=faces68", "--sift_cells=,"], ["--sift_cells", "empty"]),
    # synthetic: 0 is not the default (leaving the flag out is).
    (["--image_size=0"], ["--image_size", ">= 1", "leave it out"]),
    (["--image_size=-64"], ["--image_size", ">= 1"]),
    (["--num_correspondences=0"], ["--num_correspondences", ">= 1", "leave it out"]),
    (["--methods=sift", "--sift_size=-5"], ["--sift_size", "positive", "-5"]),
    (["--methods=sift", "--sift_size=0"], ["--sift_size", "positive"]),
    (["--methods=sift", "--sift_size=nan"], ["--sift_size", "nan"]),
    (["--methods=patch", "--patch_size=4"], ["--patch_size", "odd"]),
    (["--methods=dff", "--num_pairs=0"], ["--num_pairs", ">= 1"]),
], ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0].startswith("--") else None)
def test_eval_matching_refuses_bad_flags_up_front(tmp_path, args, words):
  out = tmp_path / "out"
  data = ["--data_dir=" + str(tmp_path / "nope")] if "--dataset=faces68" in args else []
  proc = _run("experiments.eval_matching", *args, *data, f"--out_dir={out}")
  _check_refused(proc, "eval_matching", *words, status=1)
  assert not out.exists()


def test_eval_matching_faces68_missing_data_dir_names_the_flag(tmp_path):
  out = tmp_path / "out"
  proc = _run("experiments.eval_matching", "--dataset=faces68",
              f"--data_dir={tmp_path / 'faces86'}", f"--out_dir={out}")
  _check_refused(proc, "eval_matching", "--data_dir", "faces86", "no such folder", status=1)
  assert not out.exists()


# ----------------------------------------------------------------------------------------------
# experiments.eval_alignment
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "-0.1", "inf"])
def test_eval_alignment_refuses_bad_refine_min_change(tmp_path, value):
  out = tmp_path / "out"
  proc = _run("experiments.eval_alignment", "--dataset=synthetic", "--num_faces=2",
              f"--refine_min_change={value}", f"--out_dir={out}")
  _check_refused(proc, "eval_alignment", "--refine_min_change", value, status=2)
  assert not out.exists()


@pytest.mark.parametrize("args, words", [
    (["--batch_size=0"], ["--batch_size", ">= 1"]),
    (["--image_size=0"], ["--image_size", ">= 1"]),
])
def test_eval_alignment_refuses_bad_sizes(tmp_path, args, words):
  out = tmp_path / "out"
  proc = _run("experiments.eval_alignment", "--dataset=synthetic", "--num_faces=2", *args,
              f"--out_dir={out}")
  _check_refused(proc, "eval_alignment", *words, status=2)
  assert not out.exists()


def test_eval_alignment_junk_dlib_predictor_is_one_line(tmp_path):
  """A file that is not a dlib model: one line naming it (dlib's RuntimeError caught), before
  the cascade is loaded. dlib is optional: skipped without it."""
  pytest.importorskip("dlib")
  junk = tmp_path / "predictor.dat"
  junk.write_bytes(b"this is not a dlib model" * 40)
  out = tmp_path / "out"
  proc = _run("experiments.eval_alignment", "--dataset=synthetic", "--num_faces=2",
              "--compare_dlib", f"--dlib_predictor={junk}", f"--out_dir={out}")
  _check_refused(proc, "eval_alignment", str(junk), "not a dlib shape-predictor model",
                 status=2)
  assert not out.exists()


def test_eval_alignment_refuses_a_dlib_model_of_other_points(tmp_path):
  """dlib's 5-point model (shipped by the optional face_recognition_models package) is a shape
  predictor, but not the 68-point one: refused before the cascade is loaded."""
  pytest.importorskip("dlib")
  models = pytest.importorskip("face_recognition_models")
  five = Path(models.pose_predictor_model_location()).parent / "shape_predictor_5_face_landmarks.dat"
  if not five.is_file():
    pytest.skip(f"{five} is absent")
  out = tmp_path / "out"
  proc = _run("experiments.eval_alignment", "--dataset=synthetic", "--num_faces=2",
              "--compare_dlib", f"--dlib_predictor={five}", f"--out_dir={out}")
  _check_refused(proc, "eval_alignment", five.name, "5 points", "not the 68-point model",
                 status=2)
  assert not out.exists()


@pytest.fixture(scope="module")
def zero_cascade(tmp_path_factory):
  """An untrained SIFT cascade (2 stages, crop 64, zero regressors, the mean face centred)."""
  from dff_jax.alignment import cascade, io as cascade_io
  from dff_jax.benchmarking import align as benchmark_align
  from dff_jax.face_model import load_face_model
  pose = benchmark_align.centred_initial_pose(load_face_model("default"), CROP)
  params = cascade.zero_params(2, 128, np.asarray(pose, np.float32))
  return cascade_io.save_cascade(
      tmp_path_factory.mktemp("cascade") / "cascade_sift.npz", params,
      cascade.CascadeConfig(num_stages=2, crop_size=CROP),
      dict(features="sift", descriptor_dim=128, face_model="default"))


def _write_aflw_faces(folder: Path, readable: bool) -> None:
  """Two AFLW2000-3D-layout faces (a 64 x 64 JPEG and its .mat of 68 landmarks); with
  ``readable=False`` the JPEGs are garbage."""
  import imageio.v3 as iio
  import scipy.io
  from data_pipeline import readers
  folder.mkdir()
  points = np.stack([np.linspace(16.0, 48.0, 68), np.linspace(18.0, 50.0, 68)], -1)
  pt3d = np.concatenate([readers.pixel_centres_to_one_based(points).T, np.zeros((1, 68))])
  for name in ("image00001", "image00002"):
    if readable:
      iio.imwrite(folder / f"{name}.jpg", np.full((CROP, CROP, 3), 128, np.uint8), quality=95)
    else:
      (folder / f"{name}.jpg").write_bytes(b"not a jpeg")
    scipy.io.savemat(str(folder / f"{name}.mat"), {"pt3d_68": pt3d, "Pose_Para": np.zeros((1, 7))})


@pytest.mark.parametrize("case", ["no_usable_box", "unreadable"])
def test_eval_alignment_that_scores_nothing_fails(zero_cascade, tmp_path, case):
  """Every face left out (a --boxes file with no box for them; or no readable image): the
  summary (num_faces 0) is still written, and the run fails with one line saying why."""
  data = tmp_path / "aflw"
  _write_aflw_faces(data, readable=case != "unreadable")
  args = []
  if case == "no_usable_box":
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"image00001.jpg": [0, 0, 4, 4]}))  # far from the face; 2: none
    args = [f"--boxes={boxes}", "--refine=0"]
  out = tmp_path / "out"
  proc = _run("experiments.eval_alignment", "--dataset=aflw2000", f"--data_dir={data}",
              f"--cascade={zero_cascade}", "--batch_size=2", *args, f"--out_dir={out}")
  words = (["no face could be scored", "2 face(s) had no box", "boxes.json"]
           if case == "no_usable_box" else ["no face could be scored", "2 face(s) could not be read"])
  _check_refused(proc, "eval_alignment", *words, status=2, only_line=False)
  assert proc.stdout.strip() == ""
  summary = json.loads((out / "summary.json").read_text())
  assert summary["num_faces"] == 0 and summary["nme_mean"] is None


# ----------------------------------------------------------------------------------------------
# experiments.benchmark: every refusal before the matmul peak (nothing on stdout)
# ----------------------------------------------------------------------------------------------


def _benchmark(*args):
  return _run("experiments.benchmark", "--matmul_size=64", *args)


def _check_benchmark_refused(proc, *words):
  _check_refused(proc, "benchmark", *words, status=2)
  assert proc.stdout.strip() == "", "a benchmark ran: " + proc.stdout[:500]


@pytest.mark.parametrize("args, words", [
    (["--what="], ["--what is empty"]),
    (["--what=bogus"], ["--what", "bogus"]),
    (["--what=encoder", "--batch_sizes=0"], ["--batch_sizes", ">= 1"]),
    (["--what=encoder", "--batch_sizes=x"], ["--batch_sizes=x", "whole numbers"]),
    (["--what=encoder", "--batch_sizes="], ["--batch_sizes is empty"]),
    (["--what=encoder", "--encoder_cases=nope"], ["--encoder_cases", "nope"]),
    (["--what=encoder", "--max_run_s=nan"], ["--max_run_s", "positive"]),
    (["--what=encoder", "--repeats=0"], ["--repeats", ">= 1"]),
    (["--what=align", "--align_modes=loop", "--num_stages=0"], ["--num_stages", ">= 1"]),
    (["--what=stream", "--overlays=maybe"], ["--overlays=maybe", "true"]),
    (["--what=aligner"], ["--what=aligner needs --images"]),
    (["--what=pipeline", "--matmul_size=0"], ["--matmul_size", ">= 1"]),
])
def test_benchmark_refuses_bad_flags_before_the_peak(args, words):
  _check_benchmark_refused(_benchmark(*args), *words)


def test_benchmark_aligner_refuses_zero_images(tmp_path):
  from PIL import Image
  folder = tmp_path / "photos"
  folder.mkdir()
  Image.new("RGB", (32, 32)).save(folder / "a.png")
  _check_benchmark_refused(_benchmark("--what=aligner", f"--images={folder}", "--num_images=0"),
                           "--num_images", ">= 1")
  _check_benchmark_refused(_benchmark("--what=aligner", f"--images={tmp_path / 'nope'}"),
                           "--images", "nope")


def test_benchmark_refuses_a_results_folder(tmp_path):
  folder = tmp_path / "results"
  folder.mkdir()
  _check_benchmark_refused(_benchmark("--what=encoder", f"--results={folder}"),
                           f"--results={folder}", "directory")
  (tmp_path / "file.txt").write_text("x")
  _check_benchmark_refused(
      _benchmark("--what=encoder", f"--results={tmp_path / 'file.txt' / 'r.json'}"),
      "--results", "file.txt", "not a directory")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "results"]
  assert list(folder.iterdir()) == []


@pytest.mark.parametrize("case", ["missing", "empty", "no_images"])
def test_benchmark_stream_refuses_a_data_dir_without_photos(tmp_path, case):
  """A --data_dir that does not exist or holds no image: refused before anything runs, and
  nothing is rendered into it (rendering is for the default cache, --data_dir left out)."""
  folder = tmp_path / "photos"
  if case != "missing":
    folder.mkdir()
  if case == "no_images":
    (folder / "notes.txt").write_text("x")
    (folder / "sub").mkdir()
  proc = _benchmark("--what=stream", f"--data_dir={folder}", "--num_images=2",
                    "--image_size=64")
  words = ["no such folder"] if case == "missing" else ["holds no image files"]
  _check_benchmark_refused(proc, f"--data_dir={folder}", *words, "leave --data_dir out")
  if case == "missing":
    assert not folder.exists()
  else:
    expected = [] if case == "empty" else ["notes.txt", "sub"]
    assert sorted(p.name for p in folder.iterdir()) == expected


def test_benchmark_stream_refuses_a_bad_dlib_predictor(tmp_path):
  """A missing --dlib_predictor is refused up front; a junk one too when dlib is importable."""
  _check_benchmark_refused(_benchmark("--what=stream", f"--dlib_predictor={tmp_path / 'no.dat'}"),
                           "--dlib_predictor", "no.dat", "no such file")
  pytest.importorskip("dlib")
  junk = tmp_path / "junk.dat"
  junk.write_bytes(b"junk" * 100)
  _check_benchmark_refused(_benchmark("--what=stream", f"--dlib_predictor={junk}"),
                           str(junk), "not a dlib shape-predictor model")


def test_benchmark_stream_never_renders_into_a_folder_of_other_files(tmp_path):
  """The library too: rendering goes into a new or empty folder (or a cache), not into a folder
  holding other files."""
  from dff_jax.benchmarking import stream
  folder = tmp_path / "data"
  folder.mkdir()
  (folder / "notes.txt").write_text("x")
  with pytest.raises(ValueError, match="holds no image files"):
    next(stream.bench_stream(data_dir=str(folder), num_images=2, image_size=64,
                             report=lambda m: None))
  assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_benchmark_stream_accepts_a_complete_rendered_cache_read_only(tmp_path):
  """A --data_dir that is a complete cache of rendered faces with the same settings is only
  read: check_data_dir accepts it; with other settings it is refused (nothing re-rendered)."""
  from dff_jax.benchmarking import stream
  cache = tmp_path / "cache"
  (cache / "images").mkdir(parents=True)
  settings = dict(num_images=3, image_size=64, seed=7, quality=90,
                  source="data_pipeline.faces.FaceSource")
  (cache / stream.DATASET_FILE).write_text(json.dumps(settings))
  (cache / stream.BOXES_FILE).write_text("{}")
  stream.check_data_dir(cache, num_images=2, image_size=64, seed=7)
  with pytest.raises(ValueError, match="other settings"):
    stream.check_data_dir(cache, num_images=5, image_size=64, seed=7)
  with pytest.raises(ValueError, match="other settings"):
    stream.check_data_dir(cache, num_images=2, image_size=96, seed=7)
