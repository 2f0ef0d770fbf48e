"""What every command does with its command line beyond absl's flags."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn, Sequence


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
