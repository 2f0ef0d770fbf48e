r"""Mutation testing of the core modules with mutmut (a development tool: requirements-dev.txt).

  python -m experiments.mutation_testing --modules=geometry,sampling,metrics \
      [--workdir=/tmp/dff_mutation] [--max_children=1] [--sample=N --seed=S] \
      [--out=experiments/results/mutation_scores.json]

Runs mutmut on each module's own copy of the code and merges its scores into ``--out``; what
is copied, which tests run, how mutants are counted and the list of survivors shown equivalent
are in :mod:`dff_jax.mutation`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app
from absl import flags

from experiments import cli

from dff_jax import mutation

_MODULES = flags.DEFINE_list("modules", ["geometry", "sampling", "metrics"],
                             f"Modules to test: {', '.join(mutation.MODULES)}.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/dff_mutation", "Scratch folder (copies).")
_MAX_CHILDREN = flags.DEFINE_integer("max_children", 1, "Mutants tested at once.")
_OUT = flags.DEFINE_string("out", str(mutation.REPO / "experiments" / "results"
                                      / "mutation_scores.json"),
                           "Scores JSON (merged per module).")
_FRESH = flags.DEFINE_bool("fresh", False, "Start each module's copy again from the work tree.")
_COUNT_ONLY = flags.DEFINE_bool("count_only", False,
                                "Only recount the last run's results (no mutmut run).")
_RETEST = flags.DEFINE_bool("retest_survivors", False,
                            "Only run the survivors of the last run again (after adding tests).")
_SAMPLE = flags.DEFINE_integer("sample", 0, "Run and count only a seeded uniform sample of this "
                               "many of each module's mutants (0: all).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of --sample.")


def main(argv):
  cli.refuse_arguments(argv)
  unknown = [m for m in _MODULES.value if m not in mutation.MODULES]
  if unknown:
    sys.exit(f"mutation_testing: error: unknown modules {unknown}; known: "
             f"{', '.join(mutation.MODULES)}")
  try:
    import mutmut  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    sys.exit("mutation_testing: error: pip install -r requirements-dev.txt (mutmut)")
  out = Path(_OUT.value)
  for module in _MODULES.value:
    if _COUNT_ONLY.value:
      previous = json.loads(out.read_text())["modules"].get(module, {}) if out.exists() else {}
      root = Path(_WORKDIR.value) / module
      codes = mutation.exit_codes(root)
      names = (mutation.sample_names(list(codes), _SAMPLE.value, _SEED.value)
               if _SAMPLE.value else None)
      # A recount keeps what describes the module, not the last run's time or command.
      result = {k: v for k, v in previous.items() if k in ("files", "tests", "tool")}
      result.update(mutation.count(root, names))
      if names is not None:
        result["sample"] = mutation.sample_record(names, _SEED.value, len(codes))
      result["command"] = (f"python -m experiments.mutation_testing --modules={module} "
                           "--count_only" + (f" --sample={_SAMPLE.value} --seed={_SEED.value}"
                                             if _SAMPLE.value else ""))
    else:
      result = mutation.run_module(module, Path(_WORKDIR.value), _MAX_CHILDREN.value, _FRESH.value,
                                   _RETEST.value, _SAMPLE.value, _SEED.value)
    # Read just before writing: runs of other modules may have written meanwhile.
    scores = json.loads(out.read_text()) if out.exists() else {}
    scores.setdefault("target", "kill rate >= 0.85 per module (killed, timed out or shown "
                                "equivalent over all checked mutants)")
    scores.setdefault("modules", {})
    scores["modules"][module] = result
    from dff_jax import file_io  # pylint: disable=g-import-not-at-top
    file_io.write_text_atomic(out, json.dumps(scores, indent=1) + "\n")
    print(json.dumps({module: {k: result[k] for k in ("mutants", "counts", "kill_rate")}}))


if __name__ == "__main__":
  app.run(main)
