"""Every figure quoted in WORKSPACE.md that experiments/results/figures.json lists is still quoted
there and equals its results file (rounded as quoted), and the results files that name the model
they measured name a shipped one (sha256 in dff_jax/assets/MANIFEST.json).

figures.json rows: ``text`` (the passage of WORKSPACE.md holding the figure; whitespace is
normalised, so line breaks do not matter), ``value`` (the figure as quoted, e.g. ``"0.0232"``,
``"1,942"``), ``file`` (a results file, ``.json`` or ``.jsonl``), ``select`` (``.jsonl`` only: the
record whose fields have these values), ``key`` (the path to the number in that document: keys
and list indices), optional ``divide_by`` (a second key path: the figure is the ratio),
``one_minus`` (the figure is 1 - value), ``scale`` (e.g. 100 for a percentage), ``tolerance``
(default: half a unit of the last quoted digit), ``model_sha256`` (the sha256 the results file
must record for the model it measured: a shipped file of the manifest, or ``model_source``
``git:<commit>:<path>``, a model shipped earlier) and ``note``.
"""

import decimal
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from dff_jax import recipes

REPO = Path(__file__).resolve().parents[1]
TABLE = json.loads((REPO / "experiments" / "results" / "figures.json").read_text())
ROWS = TABLE["figures"]


def _normalise(text):
  return " ".join(text.split())


WORKSPACE = _normalise((REPO / "WORKSPACE.md").read_text())


def _document(row):
  path = REPO / row["file"]
  if path.suffix == ".jsonl":
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    matches = [r for r in records if all(r.get(k) == v for k, v in row["select"].items())]
    assert len(matches) == 1, (row["file"], row["select"], len(matches))
    return matches[0]
  return json.loads(path.read_text())


def _at(document, key):
  for part in key:
    document = document[part]
  return float(document)


def figure_value(row):
  document = _document(row)
  value = _at(document, row["key"])
  if "divide_by" in row:
    value /= _at(document, row["divide_by"])
  if row.get("one_minus"):
    value = 1.0 - value
  return value * float(row.get("scale", 1.0))


def quoted_number(value):
  """``(number, half a unit of its last digit)`` of a figure as quoted (``1,942``, ``1.2e-5``)."""
  number = decimal.Decimal(value.replace(",", ""))
  return float(number), 0.5 * 10.0 ** number.as_tuple().exponent


def _models_recorded(document):
  """sha256 of every model the results document records (eval summaries' ``models``,
  ``provenance.models`` of the files written through dff_jax.provenance)."""
  found = set()
  for holder in (document.get("models"), (document.get("provenance") or {}).get("models")):
    for entry in (holder or {}).values():
      found.add(entry["sha256"])
  return found


def _row_id(row):
  return f"{Path(row['file']).stem}:{'/'.join(str(k) for k in row['key'])}={row['value']}"


@pytest.mark.parametrize("row", ROWS, ids=[_row_id(r) for r in ROWS])
def test_quoted_figure_equals_its_results_file(row):
  assert _normalise(row["text"]) in WORKSPACE, f"no longer quoted in WORKSPACE.md: {row['text']}"
  assert row["value"] in row["text"], row
  quoted, half_unit = quoted_number(row["value"])
  tolerance = float(row.get("tolerance", half_unit)) + 1e-12
  value = figure_value(row)
  assert abs(value - quoted) <= tolerance, (
      f"WORKSPACE.md quotes {row['value']} but {row['file']} {row['key']} gives {value:.6g}")


MANIFEST_SHA256 = {entry["sha256"] for entry in recipes.load_manifest()["files"].values()}


@pytest.mark.parametrize("row", [r for r in ROWS if r.get("model_sha256")],
                         ids=[_row_id(r) for r in ROWS if r.get("model_sha256")])
def test_results_file_records_the_shipped_model_it_measured(row):
  path = REPO / row["file"]
  document = (json.loads(path.read_text()) if path.suffix == ".json" else _document(row))
  assert row["model_sha256"] in _models_recorded(document), (row["file"], row["model_sha256"])
  source = row.get("model_source")
  if not source:
    assert row["model_sha256"] in MANIFEST_SHA256, "not the sha256 of any shipped file"
    return
  # A model shipped earlier: "git:<commit>:<path>" must hold exactly these bytes.
  _, commit, path = source.split(":", 2)
  proc = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, capture_output=True,
                        check=False)
  if proc.returncode:
    pytest.skip(f"git object {commit}:{path} not available here (shallow clone?)")
  assert hashlib.sha256(proc.stdout).hexdigest() == row["model_sha256"], source


def test_every_results_file_named_in_the_table_exists_and_the_table_is_not_empty():
  assert len(ROWS) > 50
  for name in {r["file"] for r in ROWS}:
    assert (REPO / name).is_file(), name


def test_quoted_number_rounding():
  assert quoted_number("0.0232") == (0.0232, pytest.approx(5e-5))
  assert quoted_number("1,942") == (1942.0, 0.5)
  assert quoted_number("1.2e-5") == (1.2e-5, pytest.approx(5e-7))
  row = dict(file="experiments/results/eval_syn_dff_summary.json", key=["failure_rate_0.08"],
             scale=100)
  assert figure_value(row) == pytest.approx(100 * _document(row)["failure_rate_0.08"])
