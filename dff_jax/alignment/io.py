"""Saving and loading trained cascades (``.npz`` of the regressors + a JSON header).

A cascade file holds the :class:`dff_jax.alignment.cascade.CascadeParams` arrays (regressors in
float16 or float32) and, under the key ``header``, a JSON string with the
:class:`~dff_jax.alignment.cascade.CascadeConfig` fields, the descriptor kind (``dff``/``sift``)
and D, the face model it was trained with, and free-form training notes.
"""

from __future__ import annotations

import dataclasses
import json
import io
import zipfile
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

import jax.numpy as jnp
import numpy as np

from dff_jax import file_io
from dff_jax.alignment import cascade

FORMAT = "dff_jax.cascade/1"
_ARRAYS = ("landmark_weights", "pose_weights", "pose_std", "initial_pose")
# A residual hidden layer, the output refinement and the descriptor template (CascadeParams).
_OPTIONAL = cascade.HIDDEN_FIELDS + ("refine_weights", "descriptor_template")


def save_cascade(path: str | Path, params: cascade.CascadeParams, config: cascade.CascadeConfig,
                 meta: Mapping[str, Any], compact: bool = True) -> Path:
  """Writes ``path`` atomically (temporary name, then rename).

  Args:
    path: output ``.npz`` file.
    params: the regressors.
    config: the static settings they were trained with.
    meta: JSON-able facts, at least ``features`` (``"dff"``/``"sift"``) and ``face_model``;
      optionally ``encoder_bundle`` (the DFF bundle folder, relative to this file, used when no
      checkpoint is given: :func:`dff_jax.alignment.features.encoder_for_cascade`) and ``data`` /
      ``box_jitter`` (the training renders, reused by ``eval_alignment --dataset=synthetic``).
    compact: store the weight matrices as float16 (halves the size; the regressors'
      relative error stays below 1e-3).
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  header = dict(format=FORMAT, config=dataclasses.asdict(config), meta=dict(meta))
  arrays = {}
  for name in _ARRAYS + _OPTIONAL:
    if getattr(params, name) is None:
      continue
    value = np.asarray(getattr(params, name), np.float32)
    if compact and name.endswith("_weights"):
      value = value.astype(np.float16)
    arrays[name] = value
  buffer = io.BytesIO()
  np.savez_compressed(buffer, header=np.array(json.dumps(header)), **arrays)
  return file_io.write_bytes_atomic(path, buffer.getvalue())


def _read(path: str | Path, names: Tuple[str, ...],
          optional: Tuple[str, ...] = ()) -> Tuple[dict, Dict[str, np.ndarray]]:
  """The JSON header and the named arrays of a cascade file (NumPy only, checked), plus those
  of ``optional`` that the file has."""
  path = Path(path)
  if path.is_dir():
    raise FileNotFoundError(f"cascade {path} is a folder: pass the cascade .npz file in it, or a "
                            "shipped cascade by name (default, fast, synthetic)")
  if not path.is_file():
    raise FileNotFoundError(f"cascade file {path} does not exist (pass --cascade=FILE; train one "
                            "with python -m experiments.train_alignment)")
  try:
    with np.load(path, allow_pickle=False) as data:
      header = json.loads(str(data["header"]))
      arrays = {name: np.asarray(data[name], np.float32) for name in names
                + tuple(n for n in optional if n in data.files)}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
    raise ValueError(f"{path} is not a readable cascade file ({type(error).__name__}); pass a "
                     "cascade_<features>.npz written by experiments.train_alignment") from None
  if header.get("format") != FORMAT:
    raise ValueError(f"{path}: unknown cascade format {header.get('format')!r}, expected {FORMAT}")
  return header, arrays


def read_cascade_header(path: str | Path) -> dict:
  """The header (``format``, ``config``, ``meta``) of a cascade file, without its arrays.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not a cascade file (one-line message).
  """
  return _read(path, ())[0]


def load_cascade(path: str | Path) -> Tuple[cascade.CascadeParams, cascade.CascadeConfig, dict]:
  """Reads a cascade file; returns ``(params, config, meta)`` (params as float32 JAX arrays).

  Raises:
    FileNotFoundError: no such file.
    ValueError: not a cascade file, truncated, or inconsistent shapes (the message names it).
  """
  header, arrays = _read(path, _ARRAYS, _OPTIONAL)
  config = cascade.CascadeConfig(**header["config"])
  k, f, t = arrays["landmark_weights"].shape
  d = (f - 1) // cascade.NUM_LANDMARKS
  hidden_ok = True
  if any(name in arrays for name in cascade.HIDDEN_FIELDS):
    h = arrays["hidden_weights"].shape[-1] if "hidden_weights" in arrays else -1
    hidden_ok = (arrays.get("hidden_weights", np.zeros(0)).shape == (k, f, h)
                 and arrays.get("output_weights", np.zeros(0)).shape
                 == (k, h, t + cascade.POSE_DIM))
  if (t != 2 * cascade.NUM_LANDMARKS or arrays["pose_weights"].shape != (k, f, cascade.POSE_DIM)
      or arrays["pose_std"].shape != (k, cascade.POSE_DIM) or (f - 1) % cascade.NUM_LANDMARKS
      or k != config.num_stages or not hidden_ok
      or arrays.get("refine_weights", np.zeros((f, t))).shape != (f, t)
      or arrays.get("descriptor_template", np.zeros((cascade.NUM_LANDMARKS, d))).shape
      != (cascade.NUM_LANDMARKS, d)):
    raise ValueError(f"{path}: inconsistent cascade arrays "
                     f"{ {n: a.shape for n, a in arrays.items()} } for {k} stages")
  params = cascade.CascadeParams(**{n: jnp.asarray(a) for n, a in arrays.items()})
  return params, config, header["meta"]
