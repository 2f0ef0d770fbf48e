"""Every command on bad input: one readable error line, non-zero exit, no traceback, no debris.

Each case runs the command as a subprocess (``python -m experiments.X``, JAX on the CPU) and
checks: the exit status is non-zero; the last non-empty stderr line names the problem (key
words); no Python traceback; the output folder holds only the expected files (no ``*.tmp``
leftovers, no half-written outputs). Images that must work (grayscale, RGBA, palette, 16-bit
PNGs, an 8 x 8 image) are processed in the same ``align`` batch as the bad ones, which are
reported one line each. The 10,000 x 10,000 PNG (zeros, a few kB on disk) must be refused from
its header with the 50-megapixel limit named.

Fixtures: an untrained zero-regressor SIFT cascade (as in tests/test_align_commands.py) and a
tiny DFF bundle (the session fixture ``tiny_bundle`` of conftest.py, shared with
tests/test_feature_commands.py).
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run_module, stderr_lines

CROP = 64


_run = run_module
_lines = stderr_lines


def _check_failed(proc, *words):
  """Non-zero exit, no traceback, the last stderr line names the problem."""
  assert proc.returncode != 0, proc.stdout + proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = _lines(proc)
  assert lines, "no error message on stderr"
  print(lines[-1])  # shown by pytest -s / on failure
  last = lines[-1].lower()
  for word in words:
    assert word.lower() in last, f"{word!r} not in {lines[-1]!r}"
  return lines[-1]


def _files(folder):
  folder = Path(folder)
  return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="session")
def env(tmp_path_factory, tiny_bundle):
  """Bad and odd input files, a zero-regressor SIFT cascade and a tiny DFF bundle."""
  from data_pipeline import faces as faces_lib
  from data_pipeline.config import pipeline_config_from_dict
  from dff_jax.alignment import cascade, io as cascade_io, training

  root = tmp_path_factory.mktemp("bad_input")
  config = pipeline_config_from_dict(dict(image_size=CROP, num_views=2, num_correspondences=16),
                                     seed=123)
  source = faces_lib.FaceSource(config, num_examples=2)
  faces = faces_lib.stack([source[i] for i in range(2)])
  face = faces["image"][0]
  cascade_config = cascade.CascadeConfig(num_stages=2, crop_size=CROP)
  crop_boxes = training.crop_boxes_for(faces["box"], cascade_config)
  initial_pose = training.pose_to_crop(faces["pose"], crop_boxes, CROP).mean(0)
  params = cascade.zero_params(2, 128, initial_pose)
  cascade_path = cascade_io.save_cascade(root / "cascade_sift.npz", params, cascade_config,
                                         dict(features="sift", descriptor_dim=128,
                                              face_model="default"))
  dff_params = cascade.zero_params(2, 8, initial_pose)  # the tiny bundle's D = 8
  dff_cascade = cascade_io.save_cascade(root / "cascade_dff.npz", dff_params, cascade_config,
                                        dict(features="dff", descriptor_dim=8,
                                             face_model="default"))

  # Images that must work.
  good = root / "good"
  good.mkdir()
  Image.fromarray(face).convert("L").save(good / "gray.png")
  rgba = np.concatenate([face, np.full(face.shape[:2] + (1,), 200, np.uint8)], -1)
  Image.fromarray(rgba, "RGBA").save(good / "rgba.png")
  Image.fromarray(face).convert("P", palette=Image.Palette.ADAPTIVE).save(good / "palette.png")
  gray16 = (np.asarray(Image.fromarray(face).convert("L"), np.uint16) * 257)
  Image.fromarray(gray16).save(good / "gray16.png")
  Image.fromarray(face[::8, ::8].copy()).save(good / "tiny8.png")
  assert Image.open(good / "gray16.png").mode.startswith("I")
  # Images that must be refused.
  bad = root / "bad"
  bad.mkdir()
  (bad / "text.jpg").write_text("this is not a JPEG\n")
  buffer = root / "full.jpg"
  Image.fromarray(face).save(buffer, quality=90)
  data = buffer.read_bytes()
  (bad / "truncated.jpg").write_bytes(data[:len(data) // 2])
  Image.new("L", (10_000, 10_000)).save(bad / "huge.png")
  mixed = root / "mixed"
  mixed.mkdir()
  for folder in (good, bad):
    for path in folder.iterdir():
      (mixed / path.name).write_bytes(path.read_bytes())
  empty = root / "empty"
  empty.mkdir()
  (empty / "notes.txt").write_text("no images here\n")

  return dict(root=root, good=good, bad=bad, mixed=mixed, empty=empty, cascade=cascade_path,
              dff_cascade=dff_cascade, bundle=tiny_bundle, face=face)


def _corrupt_bundle(env, tmp_path, kind):
  """A copy of the tiny bundle, truncated or with another encoder configuration."""
  import shutil
  copy = tmp_path / f"bundle_{kind}"
  shutil.copytree(env["bundle"], copy)
  if kind == "truncated":
    for path in copy.rglob("*"):
      if path.is_file() and path.name != "config.json":
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 3])
  else:
    config = json.loads((copy / "config.json").read_text())
    _set_descriptor_dim(config, 32)
    (copy / "config.json").write_text(json.dumps(config))
  return copy


def _set_descriptor_dim(document, value):
  if isinstance(document, dict):
    for key, item in document.items():
      if key == "descriptor_dim":
        document[key] = value
      else:
        _set_descriptor_dim(item, value)


def _malformed_face_model(tmp_path):
  path = tmp_path / "face_model.npz"
  np.savez(path, vertices=np.zeros((3, 2)))
  return path


# ----------------------------------------------------------------------------------------------
# align: one batch with every kind of image, and argument-level failures
# ----------------------------------------------------------------------------------------------


def test_align_batch_reports_bad_images_and_processes_the_rest(env, tmp_path):
  out = tmp_path / "out"
  proc = _run("experiments.align", f"--images={env['mixed']}", f"--cascade={env['cascade']}",
              f"--out_dir={out}", "--batch_size=4", "--bbox=whole")
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = [l for l in _lines(proc) if "align:" in l]
  expect = {"text.jpg": "not a recognised image", "truncated.jpg": "truncated",
            "huge.png": "limit of 50 megapixels"}
  for name, words in expect.items():
    hits = [l for l in lines if name in l]
    assert len(hits) == 1 and words in hits[0], (name, lines)
  good = ["gray", "rgba", "palette", "gray16", "tiny8"]
  assert _files(out) == sorted([f"{s}.json" for s in good] + [f"{s}_overlay.png" for s in good])
  for stem in good:
    document = json.loads((out / f"{stem}.json").read_text())
    assert len(document["faces"]) == 1
    assert np.isfinite(np.asarray(document["faces"][0]["landmarks_px"])).all()


def test_align_bad_boxes(env, tmp_path):
  out = tmp_path / "out"
  boxes = tmp_path / "boxes.json"
  boxes.write_text(json.dumps({"gray.png": [500, 500, 600, 600], "rgba.png": [10, 10, 10, 40],
                               "palette.png": None}))
  images = ",".join(str(env["good"] / n) for n in ("gray.png", "rgba.png", "palette.png"))
  proc = _run("experiments.align", f"--images={images}", f"--cascade={env['cascade']}",
              f"--boxes={boxes}", f"--out_dir={out}")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = _lines(proc)
  assert any("gray.png" in l and "box" in l for l in lines), lines
  assert any("rgba.png" in l and "box" in l for l in lines), lines
  assert _files(out) == ["palette.json", "palette_overlay.png"]
  # null: the detector's faces (whatever it finds in this 64 x 64 render).
  document = json.loads((out / "palette.json").read_text())
  assert document["box_source"].startswith("detector")
  assert all(face["score"] >= 0.6 for face in document["faces"])


@pytest.mark.parametrize("case", ["missing", "empty_dir", "zero_box", "box_mostly_outside",
                                  "refine", "corrupt_cascade", "bad_face_model",
                                  "unwritable_out", "readonly_out", "truncated_ckpt",
                                  "other_config_ckpt"])
def test_align_refuses(env, tmp_path, case):
  image = env["good"] / "gray.png"
  out = tmp_path / "out"
  args = [f"--images={image}", f"--cascade={env['cascade']}"]
  words = []
  if case == "missing":
    args[0], words = f"--images={tmp_path / 'nope.jpg'}", ["nope.jpg"]
  elif case == "empty_dir":
    args[0], words = f"--images={env['empty']}", ["no image", "skipped 1 file", "notes.txt"]
  elif case == "zero_box":
    args.append("--bbox=10,10,10,40")
    words = ["bbox"]
  elif case == "refine":
    args.append("--refine=-1")
    words = ["--refine must be >= 0", "-1"]
  elif case == "box_mostly_outside":  # 40 x 40 px, 10 x 10 of them inside the image: 1/16
    args.append(f"--bbox={CROP - 10},{-30},{CROP + 30},{10}")
    words = ["gray.png", "mostly outside", "6.2 %", "25 %"]
  elif case == "corrupt_cascade":
    bad = tmp_path / "cascade.npz"
    bad.write_bytes(env["cascade"].read_bytes()[:1000])
    args[1], words = f"--cascade={bad}", ["cascade.npz", "cascade"]
  elif case == "bad_face_model":
    args.append(f"--face_model={_malformed_face_model(tmp_path)}")
    words = ["face_model.npz"]
  elif case == "unwritable_out":
    (tmp_path / "file.txt").write_text("x")
    out = tmp_path / "file.txt" / "out"
    words = ["out"]
  elif case in ("truncated_ckpt", "other_config_ckpt"):
    bundle = _corrupt_bundle(env, tmp_path, "truncated" if case == "truncated_ckpt" else "other")
    args = [args[0], f"--cascade={env['dff_cascade']}", f"--checkpoint={bundle}"]
    words = [bundle.name]
  elif case == "readonly_out":
    out.mkdir()
    out.chmod(0o555)
    if os.access(out, os.W_OK):  # root ignores the mode ("unwritable_out" covers this case)
      pytest.skip("running as root: a 0o555 folder stays writable")
    words = ["gray", "permission"]
  try:
    proc = _run("experiments.align", *args, f"--out_dir={out}")
  finally:
    if out.exists():
      out.chmod(0o755)
  _check_failed(proc, *words)
  assert _files(tmp_path / "out") == []


@pytest.mark.parametrize("command, required", [
    ("align", []), ("eval_alignment", []), ("demo", []), ("extract_features", []),
    # These ran and ignored the argument until the session of 2026-12-06.
    ("make_pairs", ["--out_dir"]), ("show_pairs", []), ("benchmark", []),
    ("build_default_face_model", []), ("compare_overlays", ["--out"]),
    ("convert_blazeface", []), ("fit_real_faces", ["--out"]),
    ("lift_real_faces", ["--fits", "--out"])])
def test_a_stray_argument_is_one_line(command, required, tmp_path):
  """A positional argument (a path given without its flag) is refused in one line, not with
  the module's whole docstring (absl's UsageError), and not ignored: nothing is written, even
  with the command's required flags given."""
  given = [f"{flag}={tmp_path / flag.strip('-')}" for flag in required]
  proc = _run(f"experiments.{command}", *given, "photo.jpg")
  assert proc.returncode == 2, proc.stderr
  assert list(tmp_path.iterdir()) == []
  lines = _lines(proc)
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith(f"{command}: error: unexpected arguments ['photo.jpg']: every "
                             "input is a flag, --name=value"), lines


def test_every_command_refuses_stray_arguments():
  """Every command module (one that calls ``app.run``) starts its ``main`` with
  ``cli.refuse_arguments(argv)``, whose refusal the test above runs."""
  for path in sorted((ROOT / "experiments").glob("*.py")):
    text = path.read_text()
    if "app.run(" in text:
      body = text[text.index("def main(argv"):]
      first = body.splitlines()[1].strip()
      assert first == "cli.refuse_arguments(argv)", f"{path.name}: main starts with {first!r}"


def test_align_never_writes_over_an_input_image(env, tmp_path):
  """--out_dir the images' own folder, holding an earlier run's overlay among the images: the
  overlay of face.png would replace the input face_overlay.png, so the run is refused before
  anything is aligned or written; without overlays nothing collides and the run goes ahead."""
  folder = tmp_path / "photos"
  folder.mkdir()
  for name in ("face.png", "face_overlay.png"):
    (folder / name).write_bytes((env["good"] / "gray.png").read_bytes())
  before = {p.name: p.read_bytes() for p in folder.iterdir()}
  proc = _run("experiments.align", f"--images={folder}", "--bbox=whole",
              f"--cascade={env['cascade']}", f"--out_dir={folder}")
  _check_failed(proc, "face_overlay.png", "would replace the input image", "--out_dir")
  assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
  proc = _run("experiments.align", f"--images={folder}", "--bbox=whole", "--overlays=false",
              f"--cascade={env['cascade']}", f"--out_dir={folder}")
  assert proc.returncode == 0, proc.stderr
  assert sorted(p.name for p in folder.iterdir()) == sorted(
      list(before) + ["face.json", "face_overlay.json"])
  assert all((folder / name).read_bytes() == data for name, data in before.items())


def test_a_checkpoint_other_than_the_cascades_encoder_is_refused(env, tmp_path):
  """A cascade's regressors read the descriptors of the encoder it was trained with: another
  encoder (one weight changed) is refused in one line, before anything is aligned; the same
  encoder from another folder, or as the training run it was exported from, is accepted."""
  import shutil
  from flax import serialization
  from dff_jax.alignment import features as features_lib
  from dff_jax.alignment import io as cascade_io
  from dff_jax.alignment import runner
  folder = tmp_path / "shipped"
  folder.mkdir()
  shutil.copytree(env["bundle"], folder / "enc")
  params, config, meta = cascade_io.load_cascade(env["dff_cascade"])
  cascade = cascade_io.save_cascade(folder / "cascade.npz", params, config,
                                    dict(meta, encoder_bundle="enc"))
  copy = tmp_path / "copy"
  shutil.copytree(env["bundle"], copy)
  other = tmp_path / "other"
  shutil.copytree(env["bundle"], other)
  weights = serialization.msgpack_restore((other / "encoder_params.msgpack").read_bytes())
  leaf = weights
  while isinstance(leaf, dict):
    key = sorted(leaf)[0]
    parent, leaf = leaf, leaf[key]
  parent[key] = leaf + np.float32(1e-3)
  (other / "encoder_params.msgpack").write_bytes(serialization.msgpack_serialize(weights))

  out = tmp_path / "out"
  proc = _run("experiments.align", f"--images={env['good'] / 'gray.png'}", "--bbox=whole",
              f"--cascade={cascade}", f"--checkpoint={other}", f"--out_dir={out}")
  _check_failed(proc, f"--checkpoint={other}", "not the encoder", str(folder / "enc"))
  assert _files(out) == []
  with pytest.raises(ValueError, match="not the encoder"):
    runner.resolve_aligner(str(cascade), checkpoint=str(other))
  workdir = Path(env["bundle"]).parent / "workdir"  # the run the tiny bundle was exported from
  for same in (copy, folder / "enc", workdir):
    assert runner.resolve_aligner(str(cascade), checkpoint=str(same)).checkpoint == same
    assert features_lib.same_encoder(same, folder / "enc")
  assert not features_lib.same_encoder(workdir, other)
  # Tools that fit new weights for the given encoder may take another one.
  assert runner.resolve_aligner(str(cascade), checkpoint=str(other),
                                other_encoder=True).checkpoint == other


# ----------------------------------------------------------------------------------------------
# extract_features / show_features
# ----------------------------------------------------------------------------------------------


def test_extract_features_odd_pngs_work(env, tmp_path):
  """The four PNG variants and the 8 x 8 image (in-process, as the command's main calls it)."""
  from dff_jax import descriptor_maps
  model = descriptor_maps.load_dff(env["bundle"])
  for path in sorted(env["good"].iterdir()):
    out = tmp_path / f"{path.stem}.npy"
    descriptor_maps.extract_features(path, out, model=model)
    assert np.load(out).shape == (32, 32, 8)
  proc = _run("experiments.extract_features", f"--image={env['good'] / 'gray16.png'}",
              f"--checkpoint={env['bundle']}", f"--out={tmp_path / 'cli.npy'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / "cli.npy").exists() and (tmp_path / "cli.json").exists()


@pytest.mark.parametrize("case", ["missing", "text", "truncated", "huge", "truncated_ckpt",
                                  "other_config", "unwritable_out", "box_outside",
                                  "box_mostly_outside"])
def test_extract_features_refuses(env, tmp_path, case):
  image, checkpoint = env["good"] / "gray.png", env["bundle"]
  out = tmp_path / "out" / "f.npy"
  words = {"missing": ["nope.jpg", "does not exist"], "text": ["text.jpg", "not a recognised"],
           "truncated": ["truncated.jpg", "truncated"], "huge": ["huge.png", "limit"],
           "truncated_ckpt": ["bundle_truncated"], "other_config": ["bundle_other"],
           "unwritable_out": ["file.txt"], "box_outside": ["--bbox", "outside", "0 %"],
           "box_mostly_outside": ["--bbox", "mostly outside", "11 %"]}[case]
  extra = []
  if case == "box_outside":  # the image is CROP x CROP
    extra = [f"--bbox={CROP + 10},{CROP + 10},{CROP + 50},{CROP + 50}"]
  elif case == "box_mostly_outside":  # a third of each side inside: 1/9 of the area
    extra = [f"--bbox={CROP - 10},{CROP - 10},{CROP + 20},{CROP + 20}"]
  if case == "missing":
    image = tmp_path / "nope.jpg"
  elif case in ("text", "truncated"):
    image = env["bad"] / f"{case}.jpg"
  elif case == "huge":
    image = env["bad"] / "huge.png"
  elif case == "truncated_ckpt":
    checkpoint = _corrupt_bundle(env, tmp_path, "truncated")
  elif case == "other_config":
    checkpoint = _corrupt_bundle(env, tmp_path, "other")
  elif case == "unwritable_out":
    (tmp_path / "file.txt").write_text("x")
    out = tmp_path / "file.txt" / "out" / "f.npy"
  proc = _run("experiments.extract_features", f"--image={image}", f"--checkpoint={checkpoint}",
              f"--out={out}", *extra)
  _check_failed(proc, *words)
  assert _files(tmp_path / "out") == []


def test_show_features_refuses_truncated_image(env, tmp_path):
  out = tmp_path / "out" / "f.png"
  proc = _run("experiments.show_features", f"--image={env['good'] / 'rgba.png'}",
              f"--image_b={env['bad'] / 'truncated.jpg'}", f"--checkpoint={env['bundle']}",
              f"--out={out}")
  _check_failed(proc, "truncated.jpg", "truncated")
  assert _files(tmp_path / "out") == []


# ----------------------------------------------------------------------------------------------
# fit_landmarks, eval_alignment, eval_matching, train_dff, compare_face_models
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing", "nan", "too_few", "bad_face_model",
                                  "unwritable_out"])
def test_fit_landmarks_refuses(env, tmp_path, case):
  points = np.stack([np.linspace(10, 50, 68), np.linspace(10, 50, 68)], -1)
  landmarks = tmp_path / "face.npy"
  np.save(landmarks, points)
  out = tmp_path / "out"
  extra, words = [], []
  if case == "missing":
    landmarks, words = tmp_path / "nope.pts", ["nope.pts"]
  elif case == "nan":
    points[5] = np.nan
    np.save(landmarks, points)
    words = ["face.npy", "nan"]
  elif case == "too_few":
    np.save(landmarks, points[:10])
    words = ["face.npy", "68"]
  elif case == "bad_face_model":
    extra, words = [f"--face_model={_malformed_face_model(tmp_path)}"], ["face_model.npz"]
  elif case == "unwritable_out":
    (tmp_path / "file.txt").write_text("x")
    out, words = tmp_path / "file.txt" / "out", ["file.txt"]
  proc = _run("experiments.fit_landmarks", f"--landmarks={landmarks}", *extra, f"--out_dir={out}")
  _check_failed(proc, *words)
  assert _files(tmp_path / "out") == []


@pytest.mark.parametrize("case", ["missing_data_dir", "corrupt_cascade", "unwritable_out"])
def test_eval_alignment_refuses(env, tmp_path, case):
  args = ["--dataset=synthetic", "--num_faces=2", f"--cascade={env['cascade']}"]
  out = tmp_path / "out"
  if case == "missing_data_dir":
    args, words = ["--dataset=300w", f"--data_dir={tmp_path / 'nope'}", args[2]], ["nope"]
  elif case == "corrupt_cascade":
    bad = tmp_path / "cascade.npz"
    bad.write_bytes(env["cascade"].read_bytes()[:1000])
    args[2], words = f"--cascade={bad}", ["cascade.npz", "not a readable cascade"]
  else:
    (tmp_path / "file.txt").write_text("x")
    out, words = tmp_path / "file.txt" / "out", ["file.txt", "not a directory"]
  proc = _run("experiments.eval_alignment", *args, f"--out_dir={out}")
  _check_failed(proc, *words)
  assert _files(tmp_path / "out") == []


@pytest.mark.parametrize("case", ["truncated_ckpt", "bad_face_model"])
def test_eval_matching_refuses(env, tmp_path, case):
  if case == "truncated_ckpt":
    args, words = [f"--checkpoint={_corrupt_bundle(env, tmp_path, 'truncated')}",
                   "--methods=dff"], ["bundle_truncated"]
  else:
    args, words = [f"--checkpoint={env['bundle']}", "--methods=dff",
                   f"--face_model={_malformed_face_model(tmp_path)}"], ["face_model.npz"]
  proc = _run("experiments.eval_matching", *args, "--num_pairs=2", f"--out_dir={tmp_path / 'out'}")
  _check_failed(proc, *words)
  assert _files(tmp_path / "out") == []


@pytest.mark.parametrize("case", ["missing_config", "broken_config", "unwritable_workdir"])
def test_train_dff_refuses(tmp_path, case):
  config, workdir = "experiments/configs/dff_tiny.py", tmp_path / "workdir"
  if case == "missing_config":
    config, words = str(tmp_path / "nope.py"), ["nope.py", "no such file"]
  elif case == "broken_config":
    (tmp_path / "broken.py").write_text("def get_config(:\n")
    config, words = str(tmp_path / "broken.py"), ["broken.py", "config"]
  else:
    (tmp_path / "file.txt").write_text("x")
    workdir, words = tmp_path / "file.txt" / "workdir", ["file.txt"]
  proc = _run("experiments.train_dff", f"--config={config}", f"--workdir={workdir}")
  _check_failed(proc, *words)


@pytest.mark.parametrize("case", ["missing", "malformed"])
def test_compare_face_models_refuses_bad_sfm(tmp_path, case):
  sfm = tmp_path / "nope.npz" if case == "missing" else _malformed_face_model(tmp_path)
  proc = _run("experiments.compare_face_models", f"--sfm={sfm}", "--num_faces=2",
              f"--out_png={tmp_path / 'out' / 'grid.png'}")
  _check_failed(proc, sfm.name)
  assert _files(tmp_path / "out") == []
