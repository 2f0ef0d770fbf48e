"""Two local JAX processes (``jax.distributed.initialize``, CPU gloo collectives) train the same
model as one process with the same global batch."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import xla_flags

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _command(workdir, *extra):
  return [sys.executable, "-m", "experiments.train_dff",
          "--config=experiments/configs/dff_tiny.py", f"--workdir={workdir}",
          "--config.num_steps=3", "--config.global_batch_size=4", "--config.eval_every=3",
          "--config.eval.batch_size=2", "--config.checkpoint_every=3", *extra]


def _final_params(workdir):
  from dff_jax import checkpoint  # pylint: disable=g-import-not-at-top
  tree = checkpoint.restore_on_one_device(Path(workdir) / "checkpoints" / "3" / "default")
  flat = jax.tree_util.tree_flatten_with_path(tree["params"])[0]
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}


@pytest.mark.slow
def test_two_processes_train_the_same_model_as_one(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = xla_flags()  # one device per process, whatever the caller's flags
  port = _free_port()
  workers = [subprocess.Popen(
      _command(tmp_path / "two", f"--coordinator_address=localhost:{port}", "--num_processes=2",
               f"--process_id={i}"),
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  single = subprocess.run(_command(tmp_path / "one"), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
  outputs = []
  for worker in workers:
    try:
      outputs.append(worker.communicate(timeout=300)[0])
    finally:
      if worker.poll() is None:
        worker.kill()
  for worker, output in zip(workers, outputs):
    assert worker.returncode == 0, output[-3000:]
  assert single.returncode == 0, single.stderr[-3000:]
  assert "JAX process 1 / 2" in outputs[1] and "2 devices" in outputs[1]

  two, one = _final_params(tmp_path / "two"), _final_params(tmp_path / "one")
  assert two.keys() == one.keys()
  for name in one:
    np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=1e-5, err_msg=name)
  from dff_jax import progress  # pylint: disable=g-import-not-at-top
  evals_two = progress.read_metrics(tmp_path / "two" / "metrics.jsonl", kind="eval")
  evals_one = progress.read_metrics(tmp_path / "one" / "metrics.jsonl", kind="eval")
  assert len(evals_two) == len(evals_one) == 1
  assert evals_two[0]["num_points"] == evals_one[0]["num_points"]
  np.testing.assert_allclose(evals_two[0]["loss"], evals_one[0]["loss"], rtol=1e-4)
