"""Summaries over repeated benchmark runs: the mean, minimum and maximum of each figure.

A speed comparison on a shared machine is a set of runs of ``experiments.benchmark --results=FILE``
made back to back in turns (A, B, B, A, ...). This module reads such files, groups their records
by what they measured (:data:`GROUP_FIELDS`: ``what``, ``mode``, ``case``, ``batch_size``,
``processes``, as far as a record has them) and, per label (A, B), gives each requested figure's
values over the runs, their mean, minimum and maximum, and the ratio of each label's mean to a
reference label's. ``experiments/summarise_benchmarks.py`` is its command line; its output is a
results file like any other, so a mean quoted in WORKSPACE.md has a file behind it.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

GROUP_FIELDS: Tuple[str, ...] = ("what", "mode", "case", "batch_size", "processes")


class RunsError(ValueError):
  """A benchmark results file or a request that cannot be summarised (the message says why)."""


def read_records(path: str | Path) -> List[Dict[str, Any]]:
  """The ``records`` list of one ``experiments.benchmark --results`` file.

  Raises:
    RunsError: the file is missing, is not JSON, or holds no ``records`` list of objects.
  """
  path = Path(path)
  if not path.is_file():
    raise RunsError(f"{path}: no such benchmark results file")
  try:
    document = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
    raise RunsError(f"{path}: not a JSON benchmark results file ({error})") from None
  records = document.get("records") if isinstance(document, dict) else None
  if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
    raise RunsError(f"{path}: has no 'records' list; write it with "
                    "python -m experiments.benchmark --results=FILE")
  return records


def group_key(record: Mapping[str, Any]) -> Tuple[Tuple[str, Any], ...]:
  """The ``(field, value)`` pairs of :data:`GROUP_FIELDS` a record has (``None`` values left
  out), in that order: records with equal keys measured the same thing."""
  return tuple((field, record[field]) for field in GROUP_FIELDS
               if record.get(field) is not None)


def _stats(values: Sequence[float]) -> Dict[str, Any]:
  return {"runs": len(values), "mean": statistics.fmean(values), "min": min(values),
          "max": max(values), "values": list(values)}


def summarise(runs: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], fields: Sequence[str],
              reference: Optional[str] = None) -> Dict[str, Any]:
  """Per label and measurement, each field's values over the runs and their mean / min / max.

  Args:
    runs: label -> one ``records`` list per run (file), e.g. ``{"fast": [run1, run2], ...}``.
    fields: numeric record fields to summarise (e.g. ``ms_per_item``); a record without one is
      skipped for that field.
    reference: a label of ``runs``: every other label's means are also given as ratios to its
      means, for the measurements both have (``ratio_to_reference``).

  Returns:
    ``{"fields", "reference", "labels": {label: {"runs": n, "measurements": [{<group fields>,
    <field>: {"runs", "mean", "min", "max", "values"}}, ...]}}}``, measurements in the order
    first seen.

  Raises:
    RunsError: no runs, no fields, an unknown reference, or a label whose runs have none of the
      fields.
  """
  if not runs:
    raise RunsError("no runs to summarise")
  if not fields:
    raise RunsError("no fields to summarise (e.g. ms_per_item)")
  if reference is not None and reference not in runs:
    raise RunsError(f"reference {reference!r} is not one of the labels {sorted(runs)}")
  labels: Dict[str, Any] = {}
  stats: Dict[str, Dict[Tuple, Dict[str, Dict[str, Any]]]] = {}  # label -> key -> field -> _stats
  for label, label_runs in runs.items():
    values: Dict[Tuple, Dict[str, List[float]]] = {}
    for records in label_runs:
      for record in records:
        for field in fields:
          value = record.get(field)
          if isinstance(value, (int, float)) and not isinstance(value, bool):
            values.setdefault(group_key(record), {}).setdefault(field, []).append(float(value))
    if not values:
      raise RunsError(f"label {label!r}: no record of its {len(label_runs)} run(s) has any of "
                      f"the fields {list(fields)}")
    stats[label] = {key: {field: _stats(v) for field, v in by_field.items()}
                    for key, by_field in values.items()}
    labels[label] = {"runs": len(label_runs),
                     "measurements": [dict(key, **by_field) for key, by_field in
                                      stats[label].items()]}
  if reference is not None:
    for label, summary in labels.items():
      if label == reference:
        continue
      for entry in summary["measurements"]:
        key = group_key(entry)
        base = stats[reference].get(key, {})
        ratios = {f: s["mean"] / base[f]["mean"] for f, s in stats[label][key].items()
                  if f in base and base[f]["mean"]}
        if ratios:
          entry["ratio_to_reference"] = ratios
  return {"fields": list(fields), "reference": reference, "labels": labels}
