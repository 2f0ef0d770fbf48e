"""Means over repeated benchmark runs, written as a results file.

  python -m experiments.summarise_benchmarks \\
      --runs="fast=experiments/results/benchmark_stream_X_fast_*.json" \\
      --runs="student=experiments/results/benchmark_stream_X_student_*.json" \\
      --fields=ms_per_item,ratio_to_end_to_end --reference=fast --out=FILE

Each ``--runs`` is ``LABEL=GLOB`` (the files of ``python -m experiments.benchmark
--results=FILE`` runs of one variant). Per label and measurement (``what``, ``mode``, ``case``,
``batch_size``, ``processes``), ``--out`` gets each field's values over the runs, their mean,
minimum and maximum, and with ``--reference`` every other label's means as ratios to that label's
(:mod:`dff_jax.benchmarking.runs`), and its ``provenance`` (the command line as run, the git
commit). The summary is also printed. Bad flags (a glob that matches
nothing, a file that is not a benchmark results file, an unknown reference) are refused with one
line on stderr and exit status 2.
"""

from __future__ import annotations

import glob
import json

from absl import app
from absl import flags

from dff_jax import provenance
from dff_jax.benchmarking import runs as runs_lib
from experiments import cli

_RUNS = flags.DEFINE_multi_string("runs", [], "LABEL=GLOB: the results files of one variant's "
                                  "runs (repeat the flag for each variant).")
_FIELDS = flags.DEFINE_list("fields", ["ms_per_item"], "Numeric record fields to summarise.")
_REFERENCE = flags.DEFINE_string("reference", None, "A label: the others' means as ratios to "
                                 "its means.")
_OUT = flags.DEFINE_string("out", None, "Write the summary to this JSON file.")


def parse_runs(specs):
  """``["LABEL=GLOB", ...]`` -> ``{label: [sorted paths]}``; raises ``RunsError``."""
  runs = {}
  for spec in specs:
    label, sep, pattern = spec.partition("=")
    if not sep or not label or not pattern:
      raise runs_lib.RunsError(f"--runs={spec!r}: expected LABEL=GLOB")
    if label in runs:
      raise runs_lib.RunsError(f"--runs: label {label!r} given twice")
    paths = sorted(glob.glob(pattern))
    if not paths:
      raise runs_lib.RunsError(f"--runs={spec}: no file matches {pattern!r}")
    runs[label] = paths
  if not runs:
    raise runs_lib.RunsError("give at least one --runs=LABEL=GLOB")
  return runs


def main(argv):
  cli.refuse_arguments(argv)
  try:
    paths = parse_runs(_RUNS.value)
    runs = {label: [runs_lib.read_records(p) for p in files] for label, files in paths.items()}
    summary = runs_lib.summarise(runs, _FIELDS.value, _REFERENCE.value)
  except runs_lib.RunsError as error:
    cli.fail("summarise_benchmarks", str(error))
  summary["files"] = paths
  if _OUT.value:
    try:  # with the command line as run and the commit (no model files: only timings)
      provenance.write_results(_OUT.value, summary, models={})
    except OSError as error:
      cli.fail("summarise_benchmarks", f"--out={_OUT.value}: not written: {error}")
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  app.run(main)
