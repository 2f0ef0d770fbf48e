"""End-to-end tests of dff_jax.train with the tiny config (32 x 32 pairs, a few steps)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from dff_jax import checkpoint as ckpt
from dff_jax import progress
from dff_jax import train
from dff_jax.training import data as data_lib
from experiments.configs import dff_tiny

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**overrides):
  config = dff_tiny.get_config()
  config.eval_every = 0
  for key, value in overrides.items():
    target = config
    *parents, name = key.split(".")
    for parent in parents:
      target = target[parent]
    target[name] = value
  return config


def _digest_of_checkpoint(workdir, step=None):
  """Digest of every array (params, optimizer state, step, rng) of a saved checkpoint."""
  checkpointer = ckpt.Checkpointer(workdir)
  step = checkpointer.latest_step() if step is None else step
  checkpointer.close()
  tree = ckpt.restore_on_one_device(Path(workdir) / "checkpoints" / str(step) / "default")
  return step, train.params_digest(tree)


def test_one_step_end_to_end(tmp_path):
  config = tiny_config(num_steps=1, eval_every=1)
  state = train.train_and_evaluate(config, tmp_path)
  assert int(jax.device_get(state.step)) == 1
  records = progress.read_metrics(tmp_path / "metrics.jsonl")
  train_records = [r for r in records if r["kind"] == "train"]
  eval_records = [r for r in records if r["kind"] == "eval"]
  assert [r["step"] for r in train_records] == [1]
  for field in ("loss", "patch/accuracy", "images_per_second", "learning_rate", "wall_time",
                "grad_norm"):
    assert field in train_records[0], field
  assert np.isfinite(train_records[0]["loss"]) and train_records[0]["loss"] > 0
  assert len(eval_records) == 1
  assert 0.0 <= eval_records[0]["pck@4px"] <= 1.0 and eval_records[0]["num_points"] > 0
  assert np.isfinite(eval_records[0]["loss"])
  assert (tmp_path / "config.json").exists()
  assert list((tmp_path).glob("segmentations_*.npy"))
  # The final checkpoint holds the returned params; the inference bundle reproduces them.
  params, meta = ckpt.load_encoder_params(tmp_path)
  assert meta["step"] == 1 and meta["image_size"] == 32
  assert train.params_digest(params) == train.params_digest(state.params["encoder"])
  module, bundle_params, _ = ckpt.load_inference_bundle(
      ckpt.export_inference_bundle(tmp_path, tmp_path / "bundle"))
  images = np.zeros((1, 32, 32, 1), np.float32)
  descriptors = module.apply({"params": bundle_params}, images)
  assert descriptors.shape == (1, 32, 32, config.encoder.descriptor_dim)


def test_resume_skips_finished_steps(tmp_path):
  config = tiny_config(num_steps=2)
  first = train.params_digest(train.train_and_evaluate(config, tmp_path).params)
  records = progress.read_metrics(tmp_path / "metrics.jsonl", kind="train")
  assert [r["step"] for r in records] == [1, 2]
  # Same num_steps: nothing to do, nothing logged.
  again = train.params_digest(train.train_and_evaluate(config, tmp_path).params)
  assert again == first
  assert len(progress.read_metrics(tmp_path / "metrics.jsonl", kind="train")) == 2
  # More steps: continues at step 3.
  config.num_steps = 3
  state = train.train_and_evaluate(config, tmp_path)
  assert int(jax.device_get(state.step)) == 3
  records = progress.read_metrics(tmp_path / "metrics.jsonl", kind="train")
  assert [r["step"] for r in records] == [1, 2, 3]


def test_nan_guard_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
  config = tiny_config(num_steps=4, debug_nan_step=2, checkpoint_every=1)
  with pytest.raises(train.NonFiniteLossError, match=r"at step 2\b.*step 2\)"):
    train.train_and_evaluate(config, tmp_path)
  checkpointer = ckpt.Checkpointer(tmp_path)
  assert checkpointer.all_steps() == [1, 2]
  checkpointer.close()
  params, meta = ckpt.load_encoder_params(tmp_path)
  assert meta["step"] == 2
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params))


def test_info_nce_loss_trains(tmp_path):
  config = tiny_config(num_steps=1, **{"loss.patch_weight": 0.0, "loss.info_nce_weight": 1.0})
  state = train.train_and_evaluate(config, tmp_path)
  assert state.params["classifiers"] == {}
  record = progress.read_metrics(tmp_path / "metrics.jsonl", kind="train")[0]
  assert np.isfinite(record["info_nce/loss"]) and "patch/loss" not in record


def test_data_stream_is_a_pure_function_of_step():
  config = tiny_config(num_steps=4)
  source = data_lib.make_pair_source(config.data)
  from_start = list(data_lib.make_train_iterator(config, 0, source))
  resumed = next(data_lib.make_train_iterator(config, 3, source))
  assert len(from_start) == 4
  for key, value in resumed.items():
    np.testing.assert_array_equal(value, from_start[3][key])
  assert from_start[0]["images"].shape == (2, 2, 32, 32, 3)
  # Steps see different pairs: sample index = step * global_batch + row.
  assert not np.array_equal(from_start[0]["images"], from_start[1]["images"])
  np.testing.assert_array_equal(from_start[1]["images"][0], source[2]["images"][:2])


@pytest.mark.slow
def test_grain_worker_processes_give_the_same_batches():
  config = tiny_config(num_steps=3)
  in_process = list(data_lib.make_train_iterator(config, 1))
  config.num_workers = 2
  workers = list(data_lib.make_train_iterator(config, 1))
  assert len(workers) == len(in_process) == 2
  for a, b in zip(in_process, workers):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def _train_command(workdir, num_steps):
  return [sys.executable, "-m", "experiments.train_dff",
          "--config=experiments/configs/dff_tiny.py", f"--workdir={workdir}",
          f"--config.num_steps={num_steps}", "--config.checkpoint_every=2",
          "--config.eval_every=0", "--config.max_checkpoints_to_keep=100"]


@pytest.mark.slow
def test_sigkill_and_restart_is_bit_identical(tmp_path):
  num_steps = 12
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  reference = subprocess.Popen(_train_command(tmp_path / "reference", num_steps), cwd=ROOT,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  killed_dir = tmp_path / "killed"
  # Killed at any moment, perhaps while it writes a compiled program: a cache of its own
  # (conftest), so that no half-written entry reaches the suite's.
  victim_env = dict(env, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "victim_xla_cache"))
  victim = subprocess.Popen(_train_command(killed_dir, num_steps), cwd=ROOT, env=victim_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first_checkpoint = killed_dir / "checkpoints" / "2"
  deadline = time.time() + 120
  while not first_checkpoint.exists() and victim.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  os.kill(victim.pid, signal.SIGKILL)
  victim.wait()
  assert first_checkpoint.exists(), "the run never wrote its first checkpoint"
  steps_at_kill = sorted(int(p.name) for p in (killed_dir / "checkpoints").iterdir()
                         if p.name.isdigit())
  assert steps_at_kill and steps_at_kill[-1] < num_steps, "killed too late: the run had finished"

  restarted = subprocess.run(_train_command(killed_dir, num_steps), cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
  assert restarted.returncode == 0, restarted.stderr[-3000:]
  assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()[-3000:]
  step_a, digest_a = _digest_of_checkpoint(tmp_path / "reference")
  step_b, digest_b = _digest_of_checkpoint(killed_dir)
  assert step_a == step_b == num_steps
  assert digest_a == digest_b
  # The restarted run logged every step once after the kill point (no gaps at the end).
  steps = [r["step"] for r in progress.read_metrics(killed_dir / "metrics.jsonl", kind="train")]
  assert steps[-1] == num_steps and set(range(1, num_steps + 1)) <= set(steps)


def test_nearest_descriptor_pck_finds_exact_matches():
  rng = np.random.default_rng(0)
  size, dim, shift = 12, 16, 3
  desc_a = rng.normal(size=(1, size, size, dim)).astype(np.float32)
  desc_a /= np.linalg.norm(desc_a, axis=-1, keepdims=True)
  desc_b = np.roll(desc_a, shift, axis=2)  # View b = view a moved 3 px to the right.
  cols, rows = np.meshgrid(np.arange(size - shift), np.arange(size))
  points_a = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], -1)[None].astype(np.float32)
  points_b = points_a + np.float32([shift, 0])
  valid = np.ones(points_a.shape[:2], bool)
  face = np.ones((1, size, size), bool)
  sums = train.nearest_descriptor_pck(desc_a, desc_b, points_a, points_b, valid, face,
                                      (1.0, 4.0))
  assert float(sums["num_points"]) == valid.sum()
  assert float(sums["correct@1px"]) == valid.sum() and float(sums["sum_error_px"]) == 0.0
  # Wrong ground truth (5 px off): nothing within 4 px; invalid points are not counted.
  valid[0, :10] = False
  sums = train.nearest_descriptor_pck(desc_a, desc_b, points_a, points_b + np.float32([5, 0]),
                                      valid, face, (4.0,))
  assert float(sums["num_points"]) == valid.sum() and float(sums["correct@4px"]) == 0.0
  summary = train.summarize_eval(dict(sums, loss_sum=2.0, num_pairs=1.0))
  assert summary["pck@4px"] == 0.0 and summary["mean_error_px"] == pytest.approx(5.0)
