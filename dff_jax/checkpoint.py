"""Checkpoints: an Orbax ``CheckpointManager`` wrapper for training, and inference bundles.

Layout of a training work directory (written by :func:`dff_jax.train.train_and_evaluate`)::

  WORKDIR/config.json            the full experiment config (JSON)
  WORKDIR/checkpoints/<step>/    Orbax checkpoints of the whole TrainState
  WORKDIR/metrics.jsonl          one JSON record per log / eval step

An *inference bundle* (:func:`export_inference_bundle`) is what ships: a folder with

  encoder_params.msgpack         flax-serialised encoder parameters (float32), a few MB
  config.json                    {"encoder": {...}, "image_size": ..., "channels": ..., "step": ...,
                                  "experiment": {... the full training config ...}}

:func:`load_encoder_params` reads either kind; :func:`load_inference_bundle` gives the module too.
Every failure (missing, truncated or corrupt files, a checkpoint of another configuration) raises
a ``ValueError`` / ``FileNotFoundError`` that says what is wrong and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

import jax
import numpy as np

CHECKPOINT_SUBDIR = "checkpoints"
CONFIG_FILE = "config.json"
BUNDLE_PARAMS_FILE = "encoder_params.msgpack"
BUNDLE_CONFIG_FILE = "config.json"


def _ocp():
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  (slow import)
  return ocp


# ----------------------------------------------------------------------------------------------
# Pytree path names and shape checks
# ----------------------------------------------------------------------------------------------


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def flat_shapes(tree: Any) -> dict:
  """``{"params.encoder.head.kernel": shape, ...}`` for every array leaf of ``tree`` (dots join
  dict keys, attribute names and sequence indices, as Orbax names its arrays)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {".".join(_key_name(k) for k in path): tuple(np.shape(leaf)) for path, leaf in flat}


def check_same_shapes(expected: Mapping[str, tuple], found: Mapping[str, tuple],
                      what: str) -> None:
  """Raises ``ValueError`` naming the first parameter whose shape (or presence) differs.

  Args:
    expected: name -> shape wanted by the current configuration.
    found: name -> shape stored in the checkpoint.
    what: the checkpoint's description for the message.
  """
  missing = sorted(set(expected) - set(found))
  extra = sorted(set(found) - set(expected))
  order = lambda name: (not name.startswith("params."), name)  # noqa: E731  (params first)
  differ = [name for name in sorted(set(expected) & set(found), key=order)
            if tuple(expected[name]) != tuple(found[name])]
  if differ:
    details = "; ".join(f"parameter {name!r} has shape {tuple(found[name])} in the checkpoint "
                        f"but {tuple(expected[name])} in the current config"
                        for name in differ[:4])
    more = f" (and {len(differ) - 4} more)" if len(differ) > 4 else ""
    raise ValueError(
        f"{what} was written by a different configuration: {details}{more}. Use the config the "
        "checkpoint was trained with (its config.json), or a new --workdir.")
  if missing or extra:
    raise ValueError(
        f"{what} was written by a different configuration: parameters missing from the "
        f"checkpoint {missing[:5]}, unexpected in it {extra[:5]}. Use the config the checkpoint "
        "was trained with (its config.json), or a new --workdir.")


# ----------------------------------------------------------------------------------------------
# Training checkpoints
# ----------------------------------------------------------------------------------------------


class Checkpointer:
  """Saves and restores a training state pytree under ``workdir/checkpoints`` with Orbax.

  Saves are asynchronous (training goes on while the arrays are written) and atomic: Orbax
  writes into a temporary folder and renames it when complete, so a run killed mid-save leaves
  the previous checkpoint as the latest one.

  Args:
    workdir: the run's work directory.
    max_to_keep: number of most recent checkpoints kept.
    save_interval_steps: periodic saves happen at steps divisible by this (``force=True``
      saves at any step, e.g. the final one).
  """

  def __init__(self, workdir: str | Path, max_to_keep: int = 3, save_interval_steps: int = 1000):
    ocp = _ocp()
    self.save_interval_steps = max(int(save_interval_steps), 1)
    self.directory = Path(workdir).resolve() / CHECKPOINT_SUBDIR
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=True,
            cleanup_tmp_directories=True),
        item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> Optional[int]:
    """The last complete checkpoint's step, or None."""
    return self.manager.latest_step()

  def all_steps(self) -> list:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    """Saves ``state`` at ``step`` if the interval says so (or ``force``); returns whether it did."""
    if not force and step % self.save_interval_steps:
      return False
    if step in self.manager.all_steps():
      return False
    return self.manager.save(int(step), args=_ocp().args.StandardSave(state), force=True)

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> Any:
    """Restores the checkpoint at ``step`` (default: latest) into ``abstract_state``'s structure,
    shapes, dtypes and shardings (a pytree of ``jax.ShapeDtypeStruct`` or arrays).

    Raises:
      FileNotFoundError: no checkpoint.
      ValueError: the checkpoint has other parameter shapes (names the parameter and both
        shapes) or is unreadable.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    what = f"Checkpoint {self.directory / str(step)}"
    try:
      metadata = self.manager.item_metadata(step)
      tree = getattr(metadata, "tree", metadata)
      found = flat_shapes(jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree))
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{what} is unreadable ({type(e).__name__}: {e}); delete it to resume "
                       "from an earlier one, or use a new --workdir.") from e
    check_same_shapes(flat_shapes(abstract_state), found, what)
    try:
      return self.manager.restore(step, args=_ocp().args.StandardRestore(abstract_state))
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{what} is corrupt or truncated ({type(e).__name__}: {e}); delete it "
                       "to resume from an earlier one, or use a new --workdir.") from e

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def save_config_json(workdir: str | Path, config: Any) -> Path:
  """Writes ``config`` (ConfigDict or mapping) to ``workdir/config.json``; returns the path."""
  path = Path(workdir) / CONFIG_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  path.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default))
  return path


def _json_default(value: Any) -> Any:
  if isinstance(value, (np.generic,)):
    return value.item()
  if isinstance(value, (tuple, set)):
    return list(value)
  if hasattr(value, "dtype") or isinstance(value, type):
    return getattr(value, "__name__", str(value))
  return str(value)


def _read_json(path: Path, what: str) -> dict:
  if not path.exists():
    raise FileNotFoundError(f"{what}: {path} is missing.")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{what}: {path} is not valid JSON ({e}); the file is truncated or "
                     "corrupt.") from e


# ----------------------------------------------------------------------------------------------
# Encoder parameters for inference
# ----------------------------------------------------------------------------------------------


def _find_checkpoint_step_dir(path: Path) -> Tuple[Path, Path]:
  """(step directory, work directory) for a workdir, its checkpoints/ folder or one step folder."""
  if (path / CHECKPOINT_SUBDIR).is_dir():
    path = path / CHECKPOINT_SUBDIR
  if path.name != CHECKPOINT_SUBDIR and path.parent.name == CHECKPOINT_SUBDIR:
    return path, path.parent.parent
  steps = sorted(int(p.name) for p in path.iterdir()
                 if p.is_dir() and p.name.isdigit()
                 and (p / "_CHECKPOINT_METADATA").exists()) if path.is_dir() else []
  if not steps:
    raise FileNotFoundError(
        f"No complete checkpoint under {path}: expected a training workdir (with "
        f"{CHECKPOINT_SUBDIR}/<step>/), a checkpoint step folder, or an inference bundle (with "
        f"{BUNDLE_PARAMS_FILE} and {BUNDLE_CONFIG_FILE}).")
  return path / str(steps[-1]), path.parent


def _expected_encoder_shapes(encoder_config: Mapping[str, Any], image_size: int,
                             channels: int) -> dict:
  from dff_jax import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
  module = encoder_lib.encoder_from_config(dict(encoder_config))
  stride = module.stride
  size = max(stride, (min(int(image_size), 4 * stride) // stride) * stride)
  images = jax.ShapeDtypeStruct((1, size, size, int(channels)), jax.numpy.float32)
  shapes = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x), images)
  return flat_shapes(shapes["params"])


def _encoder_meta(experiment: Mapping[str, Any]) -> dict:
  encoder_config = dict(experiment.get("encoder", {}))
  data = experiment.get("data", {})
  return dict(encoder=encoder_config,
              image_size=int(data.get("image_size", encoder_config.get("image_size", 128))),
              channels=int(encoder_config.get("channels", 1)))


def restore_on_one_device(item_dir: str | Path) -> Any:
  """The whole pytree of an Orbax item folder (``checkpoints/<step>/default``) on the first local
  device, whatever topology (devices, processes, sharding) wrote it."""
  ocp = _ocp()
  with ocp.StandardCheckpointer() as checkpointer:  # closed (its threads too) even on an error
    metadata = checkpointer.metadata(item_dir)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          tree)
    return checkpointer.restore(item_dir, target)


def _load_from_checkpoint(path: Path) -> Tuple[Any, dict]:
  step_dir, workdir = _find_checkpoint_step_dir(path)
  experiment = _read_json(workdir / CONFIG_FILE, "Training config of the checkpoint")
  item_dir = step_dir / "default"
  what = f"Checkpoint {step_dir}"
  if not (item_dir / "_METADATA").exists():
    raise ValueError(f"{what} is truncated (no {item_dir / '_METADATA'}); use an earlier step.")
  try:
    restored = restore_on_one_device(item_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{what} is corrupt or truncated ({type(e).__name__}: {e}).") from e
  try:  # A run that keeps a moving average of its parameters exports the average.
    params = (restored.get("ema_params") or restored["params"])["encoder"]
  except (KeyError, TypeError) as e:
    raise ValueError(f"{what} has no params/encoder subtree: not a DFF training "
                     "checkpoint.") from e
  params = jax.tree.map(np.asarray, params)
  meta = _encoder_meta(experiment)
  meta.update(step=int(np.asarray(restored.get("step", -1))), experiment=experiment)
  return params, meta


def _load_from_bundle(path: Path) -> Tuple[Any, dict]:
  from flax import serialization  # pylint: disable=g-import-not-at-top
  meta = _read_json(path / BUNDLE_CONFIG_FILE, "Inference bundle config")
  params_path = path / BUNDLE_PARAMS_FILE
  if not params_path.exists():
    raise FileNotFoundError(f"Inference bundle {path}: {params_path} is missing.")
  try:
    params = serialization.msgpack_restore(params_path.read_bytes())
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"Inference bundle {path}: {params_path} is truncated or corrupt "
                     f"({type(e).__name__}: {e}); re-export it.") from e
  return jax.tree.map(np.asarray, params), meta


def load_encoder_params(path: str | Path,
                        expected_encoder_config: Optional[Mapping[str, Any]] = None
                        ) -> Tuple[Any, dict]:
  """Encoder parameters (all that inference needs) from a checkpoint or an inference bundle.

  Args:
    path: a training workdir, its ``checkpoints/`` folder, one ``checkpoints/<step>`` folder
      (the latest complete step is used when not given), or an inference bundle folder.
    expected_encoder_config: if given, the encoder config the caller will run the params with;
      a checkpoint of another shape raises ``ValueError`` naming the parameter and both shapes.

  Returns:
    ``(params, meta)``: ``params`` the flax ``params`` collection of :class:`DFFEncoder`
    (nested dict of float32 NumPy arrays); ``meta`` a dict with ``encoder`` (encoder config
    dict), ``image_size``, ``channels``, ``step`` and ``experiment`` (full training config).

  Raises:
    FileNotFoundError: nothing loadable at ``path``.
    ValueError: truncated / corrupt files, or shapes that do not fit the configuration.
  """
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist (expected a training workdir, a checkpoint "
                            "folder or an inference bundle).")
  if (path / BUNDLE_PARAMS_FILE).exists() or (path / BUNDLE_CONFIG_FILE).exists() and not (
      path / CHECKPOINT_SUBDIR).exists():
    params, meta = _load_from_bundle(path)
  else:
    params, meta = _load_from_checkpoint(path)
  own = _expected_encoder_shapes(meta["encoder"], meta["image_size"], meta["channels"])
  check_same_shapes(own, flat_shapes(params), f"Encoder parameters in {path}")
  if expected_encoder_config is not None:
    wanted = _expected_encoder_shapes(expected_encoder_config, meta["image_size"],
                                      meta["channels"])
    check_same_shapes(wanted, flat_shapes(params), f"Encoder parameters in {path}")
  return params, meta


def export_inference_bundle(workdir: str | Path, out_dir: str | Path) -> Path:
  """Writes the encoder of a training run's latest checkpoint as an inference bundle.

  Args:
    workdir: a training workdir (or checkpoint folder, see :func:`load_encoder_params`).
    out_dir: output folder (created); gets ``encoder_params.msgpack`` and ``config.json``.

  Returns:
    ``out_dir`` as a Path.
  """
  params, meta = load_encoder_params(workdir)
  return write_inference_bundle(params, meta, out_dir)


def write_inference_bundle(params: Any, meta: Mapping[str, Any], out_dir: str | Path) -> Path:
  """Writes encoder ``params`` (the flax ``params`` collection) and their ``meta`` (as
  :func:`load_encoder_params` returns it) as an inference bundle in ``out_dir`` (created):
  ``encoder_params.msgpack`` (float32) and ``config.json``. Returns ``out_dir`` as a Path."""
  from flax import serialization  # pylint: disable=g-import-not-at-top
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  (out_dir / BUNDLE_PARAMS_FILE).write_bytes(serialization.msgpack_serialize(params))
  (out_dir / BUNDLE_CONFIG_FILE).write_text(
      json.dumps(meta, indent=2, sort_keys=True, default=_json_default))
  return out_dir


def load_inference_bundle(directory: str | Path) -> Tuple[Any, Any, dict]:
  """``(encoder_module, params, config_dict)`` from an inference bundle (or a training workdir).

  ``encoder_module.apply({"params": params}, images)`` with images ``[B, H, W, channels]`` from
  ``dff_jax.encoder.preprocess_images(uint8, config_dict["channels"])`` gives descriptors
  ``[B, H, W, D]``; ``config_dict`` is the ``meta`` of :func:`load_encoder_params`.
  """
  from dff_jax import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
  params, meta = load_encoder_params(directory)
  module = encoder_lib.encoder_from_config(dict(meta["encoder"]))
  return module, params, meta
