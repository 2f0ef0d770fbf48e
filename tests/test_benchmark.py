"""experiments.benchmark: one command over dff_jax.benchmarking; every line names the device."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT


def _run(*args):
  return subprocess.run([sys.executable, "-m", "experiments.benchmark", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def test_align_loop_lines_name_the_device():
  proc = _run("--what=align", "--align_modes=loop", "--batch_sizes=2", "--num_stages=1",
              "--crop_size=32", "--descriptor_dim=4", "--repeats=1", "--matmul_size=64")
  assert proc.returncode == 0, proc.stderr
  records = [json.loads(line) for line in proc.stdout.splitlines()]
  assert [r["what"] for r in records] == ["matmul_peak", "align"]
  for record in records:
    assert {"device_kind", "platform", "device_count", "items_per_second",
            "compile_s"} <= set(record)
  assert records[0]["achieved_gflops"] > 0
  assert records[1]["mode"] == "loop" and records[1]["batch_size"] == 2


def test_loop_profile_times_every_part_and_the_shared_head_in_turns():
  """The loop profile of a tiny point-field cascade: one record per part of a stage (their
  shares sum to 1), the per-face-head read timed in turns with the shared one, then the loop."""
  from dff_jax.benchmarking import loop_profile
  records = list(loop_profile.bench_loop_profile(batch_size=2, num_stages=1, crop_size=32,
                                                 descriptor_dim=4, field="point", repeats=1))
  parts = [r["part"] for r in records]
  assert parts == ["features", "regress", "contour", "rows", "normal_equations",
                   "cholesky_solve", "project", "features_per_face_head", "loop"]
  assert sum(r["share"] for r in records[:7]) == pytest.approx(1.0, abs=5e-3)
  head = records[7]
  assert head["ms_per_batch"] > 0 and head["features_ms_per_batch"] > 0
  assert head["ratio_to_features"] == pytest.approx(
      head["ms_per_batch"] / head["features_ms_per_batch"], rel=0.02, abs=2e-3)
  assert records[-1]["items_per_second"] > 0 and records[-1]["num_stages"] == 1


def test_loop_profile_names_the_fit_modes_and_solves_that_many():
  """``fit_modes``: every record names it, and the normal equations are that size (under a tenth
  of the full 113-coefficient fit's FLOPs in XLA's count)."""
  from dff_jax.benchmarking import loop_profile
  runs = {modes: list(loop_profile.bench_loop_profile(batch_size=2, num_stages=1, crop_size=32,
                                                      descriptor_dim=4, repeats=1,
                                                      fit_modes=modes))
          for modes in (None, 10)}
  assert all(r["fit_modes"] == 10 for r in runs[10] if r["part"] != "features_per_face_head")
  flops = {m: {r["part"]: r["gflop_per_batch"] for r in records} for m, records in runs.items()}
  assert flops[10]["normal_equations"] < flops[None]["normal_equations"] / 10
  assert runs[10][-1]["part"] == "loop" and runs[10][-1]["items_per_second"] > 0


def test_encoder_utilisation_of_the_matmul_peak():
  from dff_jax import benchmarking
  from dff_jax.benchmarking import encoder
  peak = benchmarking.PeakFlops(64)
  [record] = encoder.bench_encoder(["cpu_small_1conv"], ["forward"], [1], repeats=1, peak=peak)
  assert record["achieved_gflops"] > 0 and record["peak_gflops"] > 0
  # Its 32- and 64-channel convolutions are Winograd's on a CPU: the call computes less than the
  # network's work as defined, which the rate counts.
  assert record["conv"] == "auto"
  assert 0 < record["gflop_per_item_computed"] < 0.8 * record["gflop_per_item"]
  # The record's GFLOP/s are rounded to 0.1 and the utilisation to 0.001: the ratio of the
  # rounded figures may differ from it by their rounding (large for a tiny achieved figure on a
  # loaded machine), and by no more.
  achieved, peak_gflops = record["achieved_gflops"], record["peak_gflops"]
  ratio = achieved / peak_gflops
  rounding = ratio * (0.05 / achieved + 0.05 / peak_gflops) + 0.0005
  assert abs(record["utilisation"] - ratio) <= rounding * 1.01


def test_bfloat16_encoder_is_measured_against_both_peaks_and_the_loop_names_it():
  """An encoder case with bfloat16 products: its record names ``matmul_dtype`` and gives
  ``utilisation_bf16``, its rate over a bfloat16 matmul peak timed in the same run (a product of
  bfloat16 operands, its own record's ``dtype``); the float32 ``utilisation`` stays. The loop
  profile with ``matmul_dtype`` names it in every record."""
  from dff_jax import benchmarking
  from dff_jax.benchmarking import encoder, loop_profile
  value, peak_record = benchmarking.matmul_peak(64, 1, "bfloat16")
  assert peak_record["dtype"] == "bfloat16" and value > 0
  [record] = encoder.bench_encoder(["dff_point_fast_l1_bf16"], ["forward"], [1], repeats=1,
                                   peak=benchmarking.PeakFlops(64))
  assert record["matmul_dtype"] == "bfloat16" and record["peak_gflops_bf16"] > 0
  achieved, peak_bf16 = record["achieved_gflops"], record["peak_gflops_bf16"]
  rounding = achieved / peak_bf16 * (0.05 / achieved + 0.05 / peak_bf16) + 0.0005
  assert abs(record["utilisation_bf16"] - achieved / peak_bf16) <= rounding * 1.01
  assert record["utilisation"] > 0
  records = list(loop_profile.bench_loop_profile(batch_size=2, num_stages=1, crop_size=32,
                                                 descriptor_dim=4, field="point", repeats=1,
                                                 matmul_dtype="bfloat16"))
  assert all(r["matmul_dtype"] == "bfloat16" for r in records
             if r["part"] != "features_per_face_head")


def test_encoder_in_worker_processes_sums_their_rates():
  """--processes=2: the forward pass timed in two pinned worker processes at once; the record's
  rate is the sum of the two workers' (batch / their step time), before the one-process one."""
  from dff_jax import benchmarking
  from dff_jax.benchmarking import encoder
  peak = benchmarking.PeakFlops(64)
  both, one = encoder.bench_encoder(["cpu_small_1conv"], ["forward"], [2], repeats=1, peak=peak,
                                    processes=[2])
  assert both["processes"] == 2 and "processes" not in one
  assert len(both["step_s_by_process"]) == 2 and both["repeats"] == 10
  expected = sum(2 / s for s in both["step_s_by_process"])
  assert both["items_per_second"] == pytest.approx(expected, rel=1e-3)
  assert both["achieved_gflops"] > 0 and 0 < both["utilisation"]
  for field in ("conv", "gflop_per_item", "gflop_per_item_computed"):
    assert both[field] == one[field]


def test_results_of_a_named_cascade_record_its_file(tmp_path):
  """``--cascade=fast`` (a shipped cascade's name): the results file records the sha256 of
  dff_jax/assets/cascade_dff_fast.npz, hashed here independently."""
  import hashlib
  import json
  import os
  from pathlib import Path
  from dff_jax import benchmarking
  shipped = Path(__file__).resolve().parents[1] / "dff_jax" / "assets" / "cascade_dff_fast.npz"
  out = tmp_path / "results.json"
  benchmarking.write_results(str(out), [{"what": "align_stream"}], os.getloadavg(),
                             cascade="fast")
  recorded = json.loads(out.read_text())["provenance"]["models"]["cascade"]
  assert recorded["sha256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()


def test_unknown_benchmark_is_a_usage_error():
  proc = _run("--what=bogus")
  assert proc.returncode != 0 and "bogus" in proc.stderr


def test_stream_boxes_come_from_an_aflw_annotation_beside_the_photo(tmp_path):
  """A photo with an AFLW2000-3D .mat beside it gets its 68 landmarks' box (planted points)."""
  import imageio.v3 as iio
  import numpy as np
  import scipy.io
  from data_pipeline import readers
  from dff_jax.benchmarking import stream
  landmarks = np.stack([np.linspace(20.0, 60.0, 68), np.linspace(30.0, 90.0, 68)], -1)
  iio.imwrite(tmp_path / "image00001.jpg", np.zeros((100, 100, 3), np.uint8))
  pt3d = np.concatenate([readers.pixel_centres_to_one_based(landmarks).T, np.zeros((1, 68))])
  scipy.io.savemat(str(tmp_path / "image00001.mat"),
                   {"pt3d_68": pt3d, "Pose_Para": np.zeros((1, 7))})
  boxes, missing = stream.photo_boxes([tmp_path / "image00001.jpg"], None)
  assert missing == 0
  np.testing.assert_allclose(boxes[tmp_path / "image00001.jpg"], [20.0, 30.0, 60.0, 90.0],
                             atol=1e-3)
