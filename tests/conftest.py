"""Shared test fixtures: the repository root, ../shared and its optional data."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SFM_NPZ = SHARED / "face_models" / "sfm" / "sfm_3448.npz"
ICT_NPZ = SHARED / "face_models" / "ict" / "ict_face_light.npz"
AFLW_DIR = SHARED / "datasets" / "aflw2000_3d_dev"

# Keep JAX on the CPU and quiet in tests, whatever the machine has.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def require(path: Path) -> Path:
  """Skips the calling test when an optional ../shared file is absent."""
  if not path.exists():
    pytest.skip(f"{path} is absent (../shared is optional)")
  return path
