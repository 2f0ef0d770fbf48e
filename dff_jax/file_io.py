"""Atomic file writing: a reader never sees a half-written output file.

Every command writes through these functions: the bytes go to a temporary file in the
destination's directory, are flushed to disk, and the file is renamed over the destination
(``os.replace``: atomic within one file system). On any error the temporary file is removed and
an existing destination is left untouched. NumPy only (no JAX).
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import orjson


def write_bytes_atomic(path: str | os.PathLike, data: bytes, durable: bool = True) -> Path:
  """Writes ``data`` to ``path`` atomically (creating the parent folder); returns the Path.

  The file gets the mode of the file it replaces, or ``rw-r--r--``. Readers see the old file or
  the whole new one, never a part (a temporary file renamed over it). ``durable`` also flushes the
  data to the disk before the rename (``fsync``: the file survives a power cut); per-image outputs
  of a large run skip it (``False``): there a sync per file costs more CPU than writing the JSON
  and several times more waiting.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(handle, "wb") as stream:
      stream.write(data)
      if durable:
        stream.flush()
        os.fsync(stream.fileno())
    os.chmod(temporary, stat.S_IMODE(os.stat(path).st_mode) if path.exists() else 0o644)
    os.replace(temporary, path)
  except BaseException:
    try:
      os.unlink(temporary)
    except FileNotFoundError:
      pass
    raise
  return path


def check_writable_folder(folder: str | os.PathLike, flag: str = "--out_dir") -> Path:
  """Creates ``folder`` (with its parents) and checks a file can be written in it, before a
  command spends time on work it could not save; returns it as a Path.

  Raises:
    OSError: one line naming ``flag`` and the folder (a file in the way, no permission, a
      read-only or immutable folder).
  """
  folder = Path(folder)
  try:
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):  # unnamed where the system allows, always removed
      pass
  except OSError as error:
    raise OSError(f"{flag}={folder} cannot be written ({error_line(error)}): choose a "
                  "writable folder") from None
  return folder


def write_text_atomic(path: str | os.PathLike, text: str, durable: bool = True) -> Path:
  """UTF-8 text, atomically (see :func:`write_bytes_atomic`)."""
  return write_bytes_atomic(path, text.encode("utf-8"), durable)


def json_safe(value: Any) -> Any:
  """NumPy scalars/arrays to Python, NaN / inf floats to ``None`` (strict JSON), recursively."""
  if isinstance(value, np.ndarray):
    if value.dtype.kind in "biu" or (value.dtype.kind == "f" and np.isfinite(value).all()):
      return value.tolist()  # nothing to replace: skip the per-element walk
    value = value.tolist()
  elif isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  return value


def write_json_atomic(path: str | os.PathLike, document: Any, durable: bool = True,
                      indent: Optional[int] = 1) -> Path:
  """A JSON document (see :func:`json_safe`), atomically (see :func:`write_bytes_atomic`).

  ``indent``: 1 (readable, for summaries: Python's encoder) or ``None`` (one line, written by
  ``orjson``, several times cheaper than Python's C encoder on an image's landmarks: the
  per-image outputs of a large run). Both write the same values: NaN / inf become ``null``
  (:func:`json_safe`) and floats their shortest round-trip form.
  """
  if indent is None:
    keys = orjson.OPT_NON_STR_KEYS  # int / float keys as strings, as Python's encoder writes them
    try:  # plain JSON (lists, floats): no walk through json_safe
      data = orjson.dumps(document, option=keys)  # NaN / inf as null, as json_safe does
    except TypeError:
      data = orjson.dumps(json_safe(document), option=keys)
    return write_bytes_atomic(path, data + b"\n", durable)
  try:  # already plain JSON (lists, finite floats): no walk through json_safe
    text = json.dumps(document, indent=indent, allow_nan=False)
  except (TypeError, ValueError):
    text = json.dumps(json_safe(document), indent=indent)
  return write_text_atomic(path, text + "\n", durable)


def write_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> Path:
  """A ``.npy`` array, atomically."""
  buffer = io.BytesIO()
  np.save(buffer, np.asarray(array))
  return write_bytes_atomic(path, buffer.getvalue())


def error_line(error: BaseException) -> str:
  """One line for a command's ``<command>: error: ...`` message.

  An ``OSError`` raised by the operating system (it carries ``filename`` and ``strerror``, e.g.
  ``NotADirectoryError`` when an output folder lies under a file, ``PermissionError`` for a
  read-only folder) becomes ``"<path>: <reason>; check that ..."``; any other error its message
  with whitespace collapsed.
  """
  if isinstance(error, OSError) and error.filename is not None and error.strerror:
    return (f"{error.filename}: {error.strerror.lower()}; check that the path exists, that its "
            "parent folders are folders, and that you may write there")
  return " ".join(str(error).split()) or type(error).__name__
