"""Shared test fixtures: the repository root, ../shared and its optional data."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SFM_NPZ = SHARED / "face_models" / "sfm" / "sfm_3448.npz"
ICT_NPZ = SHARED / "face_models" / "ict" / "ict_face_light.npz"
AFLW_DIR = SHARED / "datasets" / "aflw2000_3d_dev"

# Keep JAX on the CPU and quiet in tests, whatever the machine has.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The suite compiles hundreds of small XLA programs and runs most of them once or twice, so
# LLVM's optimisation of the CPU code costs more time than it saves: without it a fresh clone's
# `.ci/run` on the 2-core machine took 658 s of pytest, against 1,229 s the session before
# (session of 2026-12-05). The HLO (fusion, layouts) and the numbers are XLA's own up to float
# rounding; the commands, benchmarks and shipped defaults keep the full optimisation.
# Not used: XLA's older CPU emitters (--xla_cpu_use_fusion_emitters=false) halve the compile
# time of small programs and took the suite from 1,216 to 802 s of pytest on a 2-core AMD EPYC
# (session of 2026-12-05, evening), but together with optimisation level 0 they computed a wrong
# gradient (test_encoder's remat test: 7.7 off in a first-layer kernel; right at level 1 or with
# the default emitters; five tests failed in all), so the suite stays on the emitters the
# commands use.
# Subprocesses that set their own XLA_FLAGS add these (``xla_flags``).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


# One persistent XLA compilation cache for the suite, shared by both xdist workers and every
# command a test starts (they inherit the environment). It outlives the run, in $XDG_CACHE_HOME
# (else ~/.cache)/dff_jax/xla-tests/<jaxlib release and CPU kind>: the suite compiles thousands of
# programs, nearly all of them again in the next run on the same machine. JAX's key is the program
# with its compile options, XLA flags, jaxlib and this folder's path, so a changed program (or a
# moved folder) is compiled afresh. DFF_JAX_TEST_XLA_CACHE=fresh uses a folder of this run's own,
# removed at its end (what a new machine sees); any other value is the folder to use. A
# JAX_COMPILATION_CACHE_DIR of the caller's own wins. The default folder is emptied at the end of
# a run that leaves it over TEST_XLA_CACHE_MAX_BYTES (entries of old programs pile up; the next
# run refills it). A test that kills a process mid-run gives it a folder of its own, since JAX
# writes an entry in place and a half-written one would be read (and warned about) by every later
# run.
TEST_XLA_CACHE_ENV = "DFF_JAX_TEST_XLA_CACHE"
TEST_XLA_CACHE_MAX_BYTES = 2 << 30


def _suite_xla_cache() -> tuple:
  """``(folder, kind)`` of the suite's compilation cache, ``kind`` one of ``"given"`` (by
  JAX_COMPILATION_CACHE_DIR or DFF_JAX_TEST_XLA_CACHE), ``"kept"`` (the default folder) or
  ``"fresh"`` (this run's own)."""
  choice = os.environ.get(TEST_XLA_CACHE_ENV, "").strip()
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"], "given"
  if choice and choice.lower() != "fresh":
    return choice, "given"
  if not choice:
    from experiments import cli  # pylint: disable=g-import-not-at-top
    folder = cli.machine_folder(None, "xla-tests")
    if folder is not None:
      return str(folder), "kept"
  return tempfile.mkdtemp(prefix="dff_jax_tests_xla_cache_"), "fresh"


# The process that starts the run chooses (xdist's workers and the commands inherit the folder).
_XLA_CACHE, _XLA_CACHE_KIND = _suite_xla_cache()
os.environ[TEST_XLA_CACHE_ENV] = _XLA_CACHE
os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def folder_bytes(folder) -> int:
  """Bytes of the files directly in ``folder`` (0 when it is missing)."""
  try:
    with os.scandir(folder) as entries:
      return sum(e.stat().st_size for e in entries if e.is_file(follow_symlinks=False))
  except OSError:
    return 0


def pytest_sessionfinish(session, exitstatus):  # pylint: disable=unused-argument
  """Removes this run's own compilation cache, or empties the kept one when it has grown over
  TEST_XLA_CACHE_MAX_BYTES (in the process that chose it, after xdist's workers ended)."""
  if _XLA_CACHE_KIND == "fresh" or (_XLA_CACHE_KIND == "kept"
                                    and folder_bytes(_XLA_CACHE) > TEST_XLA_CACHE_MAX_BYTES):
    shutil.rmtree(_XLA_CACHE, ignore_errors=True)


def xla_flags(*extra: str) -> str:
  """``XLA_FLAGS`` for a test's subprocess: the suite's flags plus ``extra``."""
  return " ".join((TEST_XLA_FLAGS,) + extra)


if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""),
                                                   TEST_XLA_FLAGS]))


def run_module(*args, env=None) -> subprocess.CompletedProcess:
  """``python -m <args>`` from the repository root on the CPU (a command as a user runs it), in
  ``env`` (default: this process's environment)."""
  return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=ROOT, capture_output=True,
                        text=True, timeout=300,
                        env=dict(os.environ if env is None else env, JAX_PLATFORMS="cpu"))


def stderr_lines(proc: subprocess.CompletedProcess) -> list:
  """The non-blank lines a command wrote to stderr."""
  return [line for line in proc.stderr.splitlines() if line.strip()]


def require(path: Path) -> Path:
  """Skips the calling test when an optional ../shared file is absent."""
  if not path.exists():
    pytest.skip(f"{path} is absent (../shared is optional)")
  return path


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
  """An inference bundle of the tiny DFF config (32 x 32 grey input, D = 8), trained once per
  session (experiments/configs/dff_tiny.py, a few seconds) with the train_dff command."""
  root = tmp_path_factory.mktemp("dff_tiny")
  workdir, bundle = root / "workdir", root / "bundle"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.train_dff", "--config=experiments/configs/dff_tiny.py",
       f"--workdir={workdir}", f"--export_dir={bundle}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (bundle / "config.json").exists()
  return bundle


def write_random_bundle(bundle: Path, image_size: int, head: str = "dense",
                        features: tuple = (4, 8)) -> Path:
  """A tiny random DFF inference bundle (U-Net of widths ``features``, D = 4, grey input;
  ``head="point"``: the point-head encoder of the same widths) in ``bundle``: an encoder that
  runs in a blink, for tests of the DFF path that need no trained weights."""
  import json  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import serialization  # pylint: disable=g-import-not-at-top
  from dff_jax import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
  encoder = dict(features=tuple(features), descriptor_dim=4, convs_per_level=1, num_groups=2)
  if head == "point":
    encoder.update(head="point", head_hidden=8)
  module = encoder_lib.encoder_from_config(encoder)
  params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))["params"]
  bundle = Path(bundle)
  bundle.mkdir(parents=True)
  (bundle / "encoder_params.msgpack").write_bytes(serialization.msgpack_serialize(
      jax.tree.map(lambda x: np.asarray(x, np.float32), params)))
  (bundle / "config.json").write_text(json.dumps(dict(
      encoder=dict(encoder, channels=1), image_size=image_size, channels=1, step=0,
      experiment={})))
  return bundle


def numpy_conv3x3(x, kernel):
  """The definition, in float64: ``out[b, y, x, f] = sum_{i,j,c} x_pad[b, y + i, x + j, c] *
  kernel[i, j, c, f]`` with one row / column of zeros around ``x``."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
  batch, height, width, _ = x.shape
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((batch, height, width, kernel.shape[-1]))
  for i in range(3):
    for j in range(3):
      out += padded[:, i:i + height, j:j + width] @ kernel[i, j]
  return out
