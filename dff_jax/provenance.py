"""What a results file was measured with: sha256 of the model files, the commit, the command.

Results files under ``experiments/results`` carry ``provenance`` (:func:`provenance`) so that a
figure quoted in WORKSPACE.md can be tied to the exact model that produced it (the sha256 are
those of ``dff_jax/assets/MANIFEST.json`` for shipped models). ``tests/test_figures.py`` checks
the quoted figures against these files.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

REPO = Path(__file__).resolve().parents[1]


def sha256_of(path: str | Path) -> str:
  """Hex sha256 of a file, or of a folder (an encoder bundle): the sha256 of the lines
  ``<relative path> <file sha256>`` of its files in sorted order."""
  path = Path(path)
  if path.is_dir():
    lines = "".join(f"{p.relative_to(path).as_posix()} {sha256_of(p)}\n"
                    for p in sorted(path.rglob("*")) if p.is_file())
    return hashlib.sha256(lines.encode()).hexdigest()
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _display(path: Path) -> str:
  try:
    return path.resolve().relative_to(REPO).as_posix()
  except ValueError:
    return str(path)


def model_files(models: Mapping[str, Optional[str | Path]]) -> Dict[str, Dict[str, str]]:
  """``{role: {"path", "sha256"}}`` for every role whose path exists (a file or a bundle
  folder; folder files get their own entries, ``role/<file>``, as in the manifest)."""
  out: Dict[str, Dict[str, str]] = {}
  for role, path in models.items():
    if not path or not Path(path).exists():
      continue
    path = Path(path)
    out[role] = dict(path=_display(path), sha256=sha256_of(path))
    if path.is_dir():
      for file in sorted(p for p in path.rglob("*") if p.is_file()):
        out[f"{role}/{file.relative_to(path).as_posix()}"] = dict(path=_display(file),
                                                                  sha256=sha256_of(file))
  return out


def face_model_path(spec: str) -> Optional[Path]:
  """The file behind a face-model spec of :func:`dff_jax.face_model.load_face_model`."""
  from dff_jax.face_model import loaders  # pylint: disable=g-import-not-at-top
  if spec == "default":
    return loaders.DEFAULT_ASSET
  if spec in loaders.SHORTHANDS:
    return Path(loaders.SHORTHANDS[spec])
  return Path(spec)


def write_results(path: str | Path, report: Mapping[str, Any],
                  models: Mapping[str, Optional[str | Path]]) -> Path:
  """Writes ``report`` plus its :func:`provenance` as JSON to ``path`` (atomically)."""
  import json  # pylint: disable=g-import-not-at-top
  from dff_jax import file_io  # pylint: disable=g-import-not-at-top
  document = dict(report, provenance=provenance(models))
  return file_io.write_text_atomic(Path(path), json.dumps(file_io.json_safe(document),
                                                          indent=1) + "\n")


def git_commit() -> Optional[str]:
  try:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=False, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return proc.stdout.strip() or None


def provenance(models: Mapping[str, Optional[str | Path]]) -> Dict[str, Any]:
  """``{"models": model_files(models), "git_commit", "command"}`` (the command line as run)."""
  argv = list(sys.argv)
  if argv and argv[0].endswith(".py"):
    module = Path(argv[0]).resolve()
    try:
      argv[0] = "python -m " + ".".join(module.relative_to(REPO).with_suffix("").parts)
    except ValueError:
      pass
  return dict(models=model_files(models), git_commit=git_commit(), command=" ".join(argv))
