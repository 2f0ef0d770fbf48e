"""Training progress: a tqdm bar (step, loss, images/s, ETA) and a ``metrics.jsonl`` writer.

Only process 0 of a multi-host run shows the bar and writes the file (``enabled=False``
elsewhere). Neither class imports JAX: they take plain Python floats.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np


def _to_python(value: Any) -> Any:
  """A JSON-friendly Python scalar / list for a NumPy or JAX scalar / array (NaN -> "nan")."""
  if isinstance(value, (str, bool, int)) or value is None:
    return value
  array = np.asarray(value)
  if array.ndim == 0:
    item = array.item()
    if isinstance(item, float) and not math.isfinite(item):
      return str(item)
    return item
  return array.tolist()


class MetricsWriter:
  """Appends one JSON object per line to ``path`` (created with its parent folder if absent).

  Every record gets ``step`` and ``wall_time`` (seconds since the epoch); the file is flushed
  after each record, so a killed run keeps every line written before the kill.
  """

  def __init__(self, path: str | Path, enabled: bool = True):
    self.path = Path(path)
    self.enabled = enabled
    if enabled:
      self.path.parent.mkdir(parents=True, exist_ok=True)

  def write(self, step: int, metrics: Mapping[str, Any], kind: str = "train") -> dict:
    """Appends ``{"step", "kind", "wall_time", **metrics}``; returns the record written."""
    record = {"step": int(step), "kind": kind, "wall_time": time.time()}
    record.update({str(k): _to_python(v) for k, v in metrics.items()})
    if self.enabled:
      with self.path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
    return record


def read_metrics(path: str | Path, kind: Optional[str] = None) -> list:
  """All records of a ``metrics.jsonl`` file (those of one ``kind`` if given); a truncated last
  line (a run killed mid-write) is skipped."""
  records = []
  path = Path(path)
  if not path.exists():
    return records
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if kind is None or record.get("kind") == kind:
      records.append(record)
  return records


class ProgressBar:
  """A tqdm bar over training steps showing loss and throughput; the ETA is tqdm's.

  Args:
    total_steps: the run's final step.
    initial_step: the step training starts (resumes) at.
    enabled: False for a silent bar (other processes, or tests).
  """

  def __init__(self, total_steps: int, initial_step: int = 0, enabled: bool = True):
    self._bar = None
    if enabled:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total_steps, initial=initial_step, unit="step",
                       dynamic_ncols=True, desc="train", smoothing=0.1)
    self._step = initial_step

  def update(self, step: int, loss: Optional[float] = None,
             images_per_second: Optional[float] = None, **extra: float) -> None:
    """Moves the bar to ``step`` and shows the loss / images per second / extra numbers."""
    if self._bar is None:
      self._step = step
      return
    postfix = {}
    if loss is not None:
      postfix["loss"] = f"{loss:.4f}"
    if images_per_second is not None:
      postfix["img/s"] = f"{images_per_second:.1f}"
    for key, value in extra.items():
      postfix[key] = f"{value:.4g}"
    if postfix:
      self._bar.set_postfix(postfix, refresh=False)
    self._bar.update(step - self._step)
    self._step = step

  def write(self, message: str) -> None:
    """Prints a line above the bar (or plainly when the bar is disabled)."""
    if self._bar is None:
      return
    self._bar.write(message)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
