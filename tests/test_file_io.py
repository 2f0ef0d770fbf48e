"""dff_jax.file_io: atomic writes (a reader never sees a part of a file) and the JSON of every
output file."""

import json
import os

import numpy as np
import pytest

from dff_jax import file_io


def test_atomic_writes_sync_to_disk_only_when_durable(tmp_path, monkeypatch):
  """``durable=True`` (default) fsyncs the data once before the rename, ``durable=False`` never;
  both leave exactly the written bytes and no temporary file."""
  synced = []
  real_fsync = os.fsync
  monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
  file_io.write_json_atomic(tmp_path / "a.json", {"x": [1, 2]})
  assert len(synced) == 1
  file_io.write_json_atomic(tmp_path / "b.json", {"x": [1, 2]}, durable=False)
  file_io.write_bytes_atomic(tmp_path / "c.bin", b"\x00\x01", durable=False)
  file_io.write_json_atomic(tmp_path / "d.json", {"x": [1, 2]}, durable=False, indent=None)
  assert len(synced) == 1
  file_io.write_bytes_atomic(tmp_path / "e.bin", b"\x02")  # durable by default
  assert len(synced) == 2
  (tmp_path / "d.json").unlink()
  (tmp_path / "e.bin").unlink()
  assert (tmp_path / "b.json").read_text() == (tmp_path / "a.json").read_text()
  assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "c.bin"]


def test_one_line_json_holds_the_values_of_the_indented_one(tmp_path):
  """The per-image one-line JSON (orjson) and the summaries' indented JSON (Python's encoder)
  hold the same planted values: NaN / inf as null, NumPy scalars and arrays as numbers and lists,
  tuples as lists, int keys as strings, floats exactly; the one-line file is one line."""
  document = {"x": [1.5, float("nan"), float("-inf"), 0.1, 1e-5, -0.0, 123456789.125],
              "f32": np.float32(0.25), "arr": np.array([[1, 2], [3, 4]], np.int32),
              "farr": np.array([0.5, np.nan], np.float32), "t": (1, "a"), 7: True, "n": None}
  expected = {"x": [1.5, None, None, 0.1, 1e-5, -0.0, 123456789.125], "f32": 0.25,
              "arr": [[1, 2], [3, 4]], "farr": [0.5, None], "t": [1, "a"], "7": True, "n": None}
  file_io.write_json_atomic(tmp_path / "line.json", document, indent=None)
  file_io.write_json_atomic(tmp_path / "indented.json", document)
  text = (tmp_path / "line.json").read_text()
  assert text.endswith("\n") and text.count("\n") == 1
  for name in ("line.json", "indented.json"):
    assert json.loads((tmp_path / name).read_text()) == expected, name
  plain = {"landmarks_px": [[10.125, 20.5]], "score": None}  # no walk through json_safe
  file_io.write_json_atomic(tmp_path / "plain.json", plain, indent=None)
  assert (tmp_path / "plain.json").read_text() == '{"landmarks_px":[[10.125,20.5]],"score":null}\n'


def test_atomic_write_creates_folders_keeps_modes_and_renames_from_beside_the_file(
    tmp_path, monkeypatch):
  """Missing parent folders are made; the temporary file is a hidden sibling of the destination
  (so the rename stays on one file system); a new file is rw-r--r--, a replaced one keeps its
  mode; text and JSON writes are durable (fsynced) unless told otherwise."""
  renames = []
  real_replace = os.replace
  monkeypatch.setattr(os, "replace", lambda src, dst: (renames.append((src, dst)),
                                                       real_replace(src, dst)))
  synced = []
  real_fsync = os.fsync
  monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
  target = tmp_path / "a" / "b" / "out.txt"
  file_io.write_text_atomic(target, "héllo")
  assert target.read_bytes() == "héllo".encode("utf-8") and len(synced) == 1
  source, destination = renames[-1]
  assert os.path.dirname(source) == str(target.parent) and str(destination) == str(target)
  assert os.path.basename(source).startswith(".out.txt.") and source.endswith(".tmp")
  assert oct(target.stat().st_mode & 0o777) == oct(0o644)
  target.chmod(0o600)
  file_io.write_json_atomic(target, {"x": 1}, indent=None)
  assert oct(target.stat().st_mode & 0o777) == oct(0o600) and len(synced) == 2
  assert json.loads(target.read_text()) == {"x": 1}
  array = np.arange(6, dtype=np.int16).reshape(2, 3)
  file_io.write_npy_atomic(tmp_path / "c" / "a.npy", array)
  loaded = np.load(tmp_path / "c" / "a.npy")
  assert loaded.dtype == np.int16 and np.array_equal(loaded, array)
  assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.npy", "out.txt"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  target = tmp_path / "out.bin"
  target.write_bytes(b"old")
  with pytest.raises(TypeError):
    file_io.write_bytes_atomic(target, "not bytes")
  assert target.read_bytes() == b"old"
  assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_indented_json_and_json_safe():
  """Summaries are indented by one space (also when NaN forces the json_safe walk); json_safe
  maps NumPy bool / int / unsigned / finite float arrays to lists and NaN to None."""
  import tempfile  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "s.json")
    for document, value in (({"a": [1]}, 1), ({"a": [float("nan")]}, None)):
      file_io.write_json_atomic(path, document)
      text = open(path).read()
      assert text.startswith('{\n "a": [\n  ') and "NaN" not in text, document
      assert json.loads(text) == {"a": [value]}
  assert file_io.json_safe(np.array([True, False])) == [True, False]
  assert file_io.json_safe(np.array([1, 2], np.uint8)) == [1, 2]
  assert file_io.json_safe(np.array([-1], np.int64)) == [-1]
  assert file_io.json_safe(np.array([0.5, 2.0], np.float32)) == [0.5, 2.0]
  assert file_io.json_safe(np.array([0.5, np.inf])) == [0.5, None]
  assert file_io.json_safe({"k": (np.float32(1.5), np.int32(3))}) == {"k": [1.5, 3]}


def test_error_line_names_the_path_and_what_to_check():
  error = FileNotFoundError(2, "No such file or directory", "/x/y.json")
  line = file_io.error_line(error)
  assert line.startswith("/x/y.json: no such file or directory; check that the path exists")
  assert file_io.error_line(ValueError("two\n   lines\there")) == "two lines here"
  assert file_io.error_line(ValueError("")) == "ValueError"
  assert file_io.error_line(OSError("no filename")) == "no filename"


def test_check_writable_folder(tmp_path):
  """Creates the folder and leaves nothing in it; a folder no file can be created in (even as
  root: /proc/self) or a file in the way is one line naming the flag and the folder."""
  folder = file_io.check_writable_folder(tmp_path / "a" / "b")
  assert folder == tmp_path / "a" / "b" and folder.is_dir() and list(folder.iterdir()) == []
  assert file_io.check_writable_folder(folder) == folder  # an existing folder is fine
  assert list(folder.iterdir()) == []
  (tmp_path / "file.txt").write_text("x")
  for path, reason in (("/proc/self", "/proc/self"),
                       (tmp_path / "file.txt" / "out", "not a directory")):
    with pytest.raises(OSError, match=f"^--out_dir={path} cannot be written \\(.*{reason}.*\\): "
                                      "choose a writable folder$"):
      file_io.check_writable_folder(path)
  with pytest.raises(OSError, match="--out=") as info:
    file_io.check_writable_folder(tmp_path / "file.txt", "--out")
  assert "\n" not in str(info.value)
