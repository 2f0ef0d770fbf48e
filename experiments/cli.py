"""What every command does with its command line beyond absl's flags."""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from pathlib import Path
from typing import NoReturn, Optional, Sequence

# The folder of compiled XLA programs the commands keep between runs (use_compilation_cache).
CACHE_ENV = "DFF_JAX_XLA_CACHE"


def refuse_arguments(argv: Sequence[str]) -> None:
  """Returns when ``argv`` (absl's, the program first) holds no positional argument; else one
  line ``<command>: error: unexpected arguments [...] ...`` on stderr and exit status 2 (absl's
  ``app.UsageError`` prints the whole module docstring before its message)."""
  if len(argv) > 1:
    fail(Path(argv[0]).stem, f"unexpected arguments {list(argv[1:])}: every input is a flag, "
         "--name=value (a value with spaces needs quotes); --help lists them")


def fail(command: str, message: str) -> NoReturn:
  """One line ``<command>: error: <message>`` on stderr, exit status 2."""
  print(f"{command}: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
  sys.exit(2)


def machine_key() -> str:
  """A short key of what a compiled CPU program depends on beyond JAX's own cache key: the
  jaxlib release and the host's instruction-set flags (a home folder shared by machines of
  different CPUs gets one sub-folder per kind)."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:
    jaxlib = metadata.version("jaxlib")
  except metadata.PackageNotFoundError:
    jaxlib = "unknown"
  flags = ""
  try:
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith(("flags", "Features"))), "")
  except OSError:
    pass
  digest = hashlib.sha256(f"{platform.machine()}|{jaxlib}|{flags}".encode()).hexdigest()[:12]
  return f"jaxlib-{jaxlib}-{digest}"


def machine_folder(root: Optional[Path], name: str) -> Optional[Path]:
  """``root / machine_key()`` (``root`` ``None``: ``$XDG_CACHE_HOME/dff_jax/<name>``, else
  ``~/.cache/dff_jax/<name>``), made if missing; ``None`` when it cannot be made or written."""
  try:  # Path.home() raises RuntimeError when no home folder is known
    if root is None:
      root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dff_jax" / name
    folder = root / machine_key()
    folder.mkdir(parents=True, exist_ok=True)
  except (OSError, RuntimeError):
    return None
  return folder if os.access(folder, os.W_OK) else None


def use_compilation_cache() -> Optional[Path]:
  """Keeps the programs XLA compiles for this command in a folder that outlives the run, so the
  next run loads them instead of compiling again (JAX's persistent compilation cache).

  The folder is ``$DFF_JAX_XLA_CACHE`` (default ``$XDG_CACHE_HOME/dff_jax/xla``, else
  ``~/.cache/dff_jax/xla``) / one sub-folder per jaxlib release and CPU kind. ``DFF_JAX_XLA_CACHE
  =off`` turns it off; a ``JAX_COMPILATION_CACHE_DIR`` of the caller's own is left as it is; a
  folder that cannot be made or written turns it off without a word (it only saves time). Call
  it before the command compiles anything; worker processes inherit it through the environment.

  Returns:
    The folder used, or ``None`` when off.
  """
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
  choice = os.environ.get(CACHE_ENV, "").strip()
  if choice.lower() == "off":
    return None
  folder = machine_folder(Path(choice).expanduser() if choice else None, "xla")
  if folder is None:
    return None
  os.environ["JAX_COMPILATION_CACHE_DIR"] = str(folder)
  # Every program, small ones too: loading one is faster than compiling it.
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  if "jax" in sys.modules:  # imported already: its config read the environment then
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
  return folder
