"""The sharded train step on 8 fake CPU devices equals the single-device step.

Each configuration runs in its own subprocess, since the device count
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``) is fixed when JAX starts.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import xla_flags

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from dff_jax import train
from dff_jax.benchmarking import train_step
from dff_jax.training import sharding as sharding_lib
from experiments.configs import dff_tiny

mode, fsdp, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
config = dff_tiny.get_config()
config.global_batch_size = 8
config.sharding.params = mode
config.sharding.fsdp = fsdp
mesh = sharding_lib.create_mesh(config)
state, shardings = train.create_sharded_state(config, mesh)
step, _ = train.make_jitted_steps(config, mesh, shardings)
num_vertices = 300
table = np.random.default_rng(0).integers(0, config.loss.num_patches,
                                          (config.loss.num_segmentations, num_vertices))
table = jax.device_put(table.astype(np.int32), NamedSharding(mesh, P()))
losses = []
for t in range(2):
  batch = sharding_lib.to_global_batch(train_step.synthetic_batch(config, 8, num_vertices, seed=t), mesh)
  state, metrics = step(state, batch, table)
  losses.append(float(metrics["loss"]))
sharded = sum(1 for s in jax.tree.leaves(shardings) if s.spec != P())
params = {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]}
np.savez(out, **params)
print(json.dumps(dict(devices=jax.device_count(), mesh=dict(mesh.shape), losses=losses,
                      sharded_leaves=sharded, step=int(state.step))))
"""


def _run(tmp_path, name, devices, mode="replicated", fsdp=1):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=xla_flags(f"--xla_force_host_platform_device_count={devices}"))
  out = tmp_path / f"{name}.npz"
  result = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(fsdp), str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  info = json.loads(result.stdout.strip().splitlines()[-1])
  with np.load(out) as data:
    return info, dict(data)


@pytest.mark.slow
def test_sharded_step_equals_single_device_step(tmp_path):
  single_info, single = _run(tmp_path, "single", 1)
  data_info, data_parallel = _run(tmp_path, "data", 8)
  fsdp_info, fsdp = _run(tmp_path, "fsdp", 8, mode="fsdp", fsdp=4)
  assert single_info["devices"] == 1 and data_info["devices"] == 8
  assert data_info["mesh"] == {"data": 8, "fsdp": 1}
  assert fsdp_info["mesh"] == {"data": 2, "fsdp": 4}
  assert data_info["sharded_leaves"] == 0 and fsdp_info["sharded_leaves"] > 0
  assert single_info["step"] == data_info["step"] == fsdp_info["step"] == 2
  np.testing.assert_allclose(data_info["losses"], single_info["losses"], rtol=1e-5)
  np.testing.assert_allclose(fsdp_info["losses"], single_info["losses"], rtol=1e-5)
  assert single.keys() == data_parallel.keys() == fsdp.keys()
  for name in single:
    np.testing.assert_allclose(data_parallel[name], single[name], rtol=1e-4, atol=1e-5,
                               err_msg=name)
    np.testing.assert_allclose(fsdp[name], single[name], rtol=1e-4, atol=1e-5, err_msg=name)
