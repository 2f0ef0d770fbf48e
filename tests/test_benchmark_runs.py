"""dff_jax.benchmarking.runs and experiments.summarise_benchmarks: means over repeated runs of
planted benchmark records (known values, so known means, extremes and ratios)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dff_jax.benchmarking import runs

REPO = Path(__file__).resolve().parents[1]


def _run(jitted_ms, stream_ms, dlib_ratio):
  """One stream run's records as experiments.benchmark writes them (the fields that matter)."""
  return [
      {"what": "matmul_peak", "achieved_gflops": 70.0},
      {"what": "align_stream", "mode": "jitted_call", "ms_per_item": jitted_ms},
      {"what": "align_stream", "mode": "end_to_end", "processes": 2, "ms_per_item": stream_ms},
      {"what": "align_stream", "mode": "dlib_predictor", "processes": 2, "ms_per_item": 2.0,
       "ratio_to_end_to_end": dlib_ratio},
  ]


def _measurement(summary, label, **key):
  found = [m for m in summary["labels"][label]["measurements"]
           if all(m.get(k) == v for k, v in key.items()) and len(runs.group_key(m)) == len(key)]
  assert len(found) == 1, (label, key, found)
  return found[0]


def test_means_extremes_and_ratios_of_planted_runs():
  planted = {"old": [_run(6.0, 6.0, 3.0), _run(8.0, 5.0, 2.5)],
             "new": [_run(5.0, 4.5, 2.25), _run(4.0, 5.5, 2.75), _run(6.0, 5.0, 2.5)]}
  summary = runs.summarise(planted, ["ms_per_item", "ratio_to_end_to_end"], reference="old")
  assert summary["labels"]["old"]["runs"] == 2 and summary["labels"]["new"]["runs"] == 3
  jitted_old = _measurement(summary, "old", what="align_stream", mode="jitted_call")
  assert jitted_old["ms_per_item"] == {"runs": 2, "mean": 7.0, "min": 6.0, "max": 8.0,
                                       "values": [6.0, 8.0]}
  assert "ratio_to_reference" not in jitted_old
  jitted_new = _measurement(summary, "new", what="align_stream", mode="jitted_call")
  assert jitted_new["ms_per_item"]["mean"] == pytest.approx(5.0)
  assert jitted_new["ratio_to_reference"] == {"ms_per_item": pytest.approx(5.0 / 7.0)}
  stream_new = _measurement(summary, "new", what="align_stream", mode="end_to_end", processes=2)
  assert stream_new["ms_per_item"]["min"] == 4.5 and stream_new["ms_per_item"]["max"] == 5.5
  assert stream_new["ratio_to_reference"]["ms_per_item"] == pytest.approx(5.0 / 5.5)
  dlib_new = _measurement(summary, "new", what="align_stream", mode="dlib_predictor",
                          processes=2)
  assert dlib_new["ratio_to_end_to_end"]["mean"] == pytest.approx(2.5)
  assert dlib_new["ratio_to_reference"]["ratio_to_end_to_end"] == pytest.approx(2.5 / 2.75)
  # The peak record has neither field, so it is no measurement.
  assert all(m["what"] != "matmul_peak" for m in summary["labels"]["new"]["measurements"])


def test_records_of_different_batch_sizes_or_processes_are_kept_apart():
  records = [{"what": "encoder", "case": "a", "batch_size": 4, "processes": None,
              "items_per_second": 10.0},
             {"what": "encoder", "case": "a", "batch_size": 8, "items_per_second": 20.0},
             {"what": "encoder", "case": "a", "batch_size": 8, "processes": 2,
              "items_per_second": 40.0}]
  summary = runs.summarise({"x": [records]}, ["items_per_second"])
  means = sorted(m["items_per_second"]["mean"] for m in summary["labels"]["x"]["measurements"])
  assert means == [10.0, 20.0, 40.0]


def test_bad_requests_are_refused_with_a_reason(tmp_path):
  with pytest.raises(runs.RunsError, match="no runs"):
    runs.summarise({}, ["ms_per_item"])
  with pytest.raises(runs.RunsError, match="reference 'z'"):
    runs.summarise({"a": [_run(1, 1, 1)]}, ["ms_per_item"], reference="z")
  with pytest.raises(runs.RunsError, match="none|no record"):
    runs.summarise({"a": [_run(1, 1, 1)]}, ["items_per_second"])
  with pytest.raises(runs.RunsError, match="no such"):
    runs.read_records(tmp_path / "missing.json")
  (tmp_path / "other.json").write_text(json.dumps({"nme_mean": 0.04}))
  with pytest.raises(runs.RunsError, match="no 'records' list"):
    runs.read_records(tmp_path / "other.json")
  (tmp_path / "broken.json").write_text("{")
  with pytest.raises(runs.RunsError, match="not a JSON"):
    runs.read_records(tmp_path / "broken.json")


def _command(*flags, cwd):
  return subprocess.run([sys.executable, "-m", "experiments.summarise_benchmarks", *flags],
                        cwd=cwd, capture_output=True, text=True, check=False,
                        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_command_writes_the_summary_and_refuses_an_empty_glob(tmp_path):
  for name, run in (("a_1", _run(6.0, 6.0, 3.0)), ("a_2", _run(8.0, 5.0, 2.5)),
                    ("b_1", _run(3.0, 4.0, 2.0))):
    (tmp_path / f"{name}.json").write_text(json.dumps({"records": run}))
  out = tmp_path / "summary.json"
  done = _command("--runs=a=a_*.json", "--runs=b=b_*.json", "--reference=a",
                  f"--out={out}", cwd=tmp_path)
  assert done.returncode == 0, done.stderr
  summary = json.loads(out.read_text())
  assert summary["files"] == {"a": ["a_1.json", "a_2.json"], "b": ["b_1.json"]}
  stream_b = _measurement(summary, "b", what="align_stream", mode="end_to_end", processes=2)
  assert stream_b["ratio_to_reference"]["ms_per_item"] == pytest.approx(4.0 / 5.5)
  refused = _command("--runs=a=nothing_*.json", cwd=tmp_path)
  assert refused.returncode == 2
  assert refused.stderr.strip().splitlines() == [
      "summarise_benchmarks: error: --runs=a=nothing_*.json: no file matches 'nothing_*.json'"]
