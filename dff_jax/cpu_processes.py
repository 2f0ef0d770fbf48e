"""Worker processes on a CPU host, each on its own share of the cores (``align --processes``,
``benchmark --processes``).

On XLA:CPU one program keeps its host's cores poorly busy: on two cores the fast pair's jitted
call used about 1.4 of them and the streaming ``align`` about 1.5 (WORKSPACE.md section 15, "One
process per core"), so one process leaves much of a 2-core machine idle. Separate processes, each pinned to its own cores
with XLA's thread pool sized to them, use the host fully. XLA sizes that pool from the ``NPROC``
environment variable when it is set (else from the host's cores) when it creates the CPU client,
i.e. at the process's first JAX computation: :func:`pin` must run before it. Importing this
module imports nothing of JAX.
"""

from __future__ import annotations

import multiprocessing
import os
from typing import List, Optional


def available_cores() -> List[int]:
  """The cores this process may run on (its CPU affinity; all cores where the platform has
  none), sorted."""
  if hasattr(os, "sched_getaffinity"):
    return sorted(os.sched_getaffinity(0))
  return list(range(os.cpu_count() or 1))


def core_groups(processes: int) -> List[Optional[List[int]]]:
  """The cores each of ``processes`` worker processes is pinned to: :func:`available_cores`
  split into equal contiguous groups (the first ones one core larger when they do not divide),
  or ``None`` for every process (no pinning) when there are more processes than cores."""
  cores = available_cores()
  if processes > len(cores):
    return [None] * processes
  size, extra = divmod(len(cores), processes)
  groups, start = [], 0
  for rank in range(processes):
    stop = start + size + (rank < extra)
    groups.append(cores[start:stop])
    start = stop
  return groups


def pin(cores: Optional[List[int]]) -> None:
  """Runs this process on ``cores`` (``None``: wherever the system likes) with XLA:CPU's thread
  pool sized to them (one thread without cores). Call it first thing in a worker process,
  before any JAX computation."""
  os.environ["NPROC"] = str(len(cores) if cores else 1)
  if cores and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, cores)


def context():
  """The :mod:`multiprocessing` context of the workers: "spawn" (a fork of a process whose JAX
  runtime has started threads is unsafe; a spawned worker starts its own)."""
  return multiprocessing.get_context("spawn")
