"""Tests of dff_jax.checkpoint: Orbax save / restore / resume, inference bundles, clear errors."""

import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from dff_jax import checkpoint as ckpt
from dff_jax import encoder as encoder_lib

ENCODER = dict(features=(4, 8), descriptor_dim=4, convs_per_level=1, num_groups=2, channels=1)


def _state(encoder_config=ENCODER, seed=0):
  module = encoder_lib.encoder_from_config(encoder_config)
  init = jax.jit(module.init, compiler_options={"xla_backend_optimization_level": 0})
  params = {"encoder": init(jax.random.PRNGKey(seed), jnp.zeros((1, 16, 16, 1)))["params"],
            "classifiers": {"weight": jnp.ones((2, 4, 3)), "bias": jnp.zeros((2, 3))}}
  tx = optax.adamw(1e-3)
  return {"step": jnp.asarray(3, jnp.int32), "params": params, "opt_state": tx.init(params),
          "rng": jax.random.PRNGKey(1)}


def _write_run(workdir, encoder_config=ENCODER, seed=0, steps=(3,)):
  state = _state(encoder_config, seed)
  config = ml_collections.ConfigDict(dict(encoder=dict(encoder_config),
                                          data=dict(image_size=16)))
  ckpt.save_config_json(workdir, config)
  checkpointer = ckpt.Checkpointer(workdir, max_to_keep=3, save_interval_steps=1)
  for step in steps:
    checkpointer.save(step, state, force=True)
  checkpointer.close()
  return state


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def test_save_restore_round_trip(tmp_path):
  state = _write_run(tmp_path, steps=(1, 2))
  checkpointer = ckpt.Checkpointer(tmp_path)
  assert checkpointer.latest_step() == 2
  assert checkpointer.all_steps() == [1, 2]
  restored = checkpointer.restore(_abstract(state))
  checkpointer.close()
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_restore_of_other_configuration_names_parameter_and_shapes(tmp_path):
  _write_run(tmp_path)
  other = _state(dict(ENCODER, descriptor_dim=6))
  checkpointer = ckpt.Checkpointer(tmp_path)
  with pytest.raises(ValueError, match=r"params\.encoder\.head\.kernel.*\(1, 1, 4, 4\).*\(1, 1, 4, 6\)"):
    checkpointer.restore(_abstract(other))
  checkpointer.close()


def test_restore_without_checkpoint_is_a_clear_error(tmp_path):
  checkpointer = ckpt.Checkpointer(tmp_path)
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    checkpointer.restore(_abstract(_state()))
  checkpointer.close()


def test_load_encoder_params_from_workdir_and_bundle(tmp_path):
  state = _write_run(tmp_path / "run")
  params, meta = ckpt.load_encoder_params(tmp_path / "run")
  assert meta["step"] == 3 and meta["channels"] == 1 and meta["image_size"] == 16
  for a, b in zip(jax.tree.leaves(state["params"]["encoder"]), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), b)
  # The step folder itself works too.
  params_step, _ = ckpt.load_encoder_params(tmp_path / "run" / "checkpoints" / "3")
  assert ckpt.flat_shapes(params_step) == ckpt.flat_shapes(params)

  bundle = ckpt.export_inference_bundle(tmp_path / "run", tmp_path / "bundle")
  assert sorted(p.name for p in bundle.iterdir()) == ["config.json", "encoder_params.msgpack"]
  module, bundle_params, config = ckpt.load_inference_bundle(bundle)
  assert config["encoder"]["descriptor_dim"] == 4
  images = encoder_lib.preprocess_images(np.full((1, 16, 16, 3), 128, np.uint8), 1)
  want = encoder_lib.encoder_from_config(ENCODER).apply(
      {"params": state["params"]["encoder"]}, images)
  got = module.apply({"params": bundle_params}, images)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
  assert got.shape == (1, 16, 16, 4)


def test_load_encoder_params_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    ckpt.load_encoder_params(tmp_path / "nothing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="No complete checkpoint"):
    ckpt.load_encoder_params(tmp_path / "empty")

  _write_run(tmp_path / "run")
  with pytest.raises(ValueError, match=r"head\.kernel.*\(1, 1, 4, 4\).*\(1, 1, 4, 6\)"):
    ckpt.load_encoder_params(tmp_path / "run", expected_encoder_config=dict(ENCODER, descriptor_dim=6))

  # A truncated bundle: half of the msgpack file.
  bundle = ckpt.export_inference_bundle(tmp_path / "run", tmp_path / "bundle")
  data = (bundle / ckpt.BUNDLE_PARAMS_FILE).read_bytes()
  (bundle / ckpt.BUNDLE_PARAMS_FILE).write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match="truncated or corrupt"):
    ckpt.load_inference_bundle(bundle)
  # A corrupt config.json.
  shutil.copytree(tmp_path / "run", tmp_path / "run2")
  (tmp_path / "run2" / "config.json").write_text('{"encoder": ')
  with pytest.raises(ValueError, match="not valid JSON"):
    ckpt.load_encoder_params(tmp_path / "run2")
  # A checkpoint whose array data was deleted (truncated copy).
  shutil.copytree(tmp_path / "run", tmp_path / "run3")
  for path in (tmp_path / "run3" / "checkpoints" / "3" / "default").rglob("*"):
    if path.is_file() and path.name not in ("_METADATA", "_CHECKPOINT_METADATA"):
      path.unlink()
  with pytest.raises(ValueError, match="corrupt or truncated"):
    ckpt.load_encoder_params(tmp_path / "run3")


def test_bundle_of_other_shape_is_rejected(tmp_path):
  _write_run(tmp_path / "run")
  bundle = ckpt.export_inference_bundle(tmp_path / "run", tmp_path / "bundle")
  meta = json.loads((bundle / "config.json").read_text())
  meta["encoder"]["descriptor_dim"] = 5
  (bundle / "config.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match=r"head\.kernel.*\(1, 1, 4, 4\).*\(1, 1, 4, 5\)"):
    ckpt.load_inference_bundle(bundle)
