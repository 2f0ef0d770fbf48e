"""The mutation-testing tool's counting and sampling (dff_jax/mutation.py; mutmut itself is a
development dependency, so the test that reads its status codes skips without it)."""

import json

import pytest

from dff_jax import mutation


def test_wilson_interval_known_values():
  z2 = 1.96**2
  # No successes: [0, z^2 / (n + z^2)]; all successes: [n / (n + z^2), 1] (closed forms).
  low, high = mutation.wilson_interval(0, 10)
  assert low == pytest.approx(0.0, abs=1e-4) and high == pytest.approx(z2 / (10 + z2), abs=1e-4)
  low, high = mutation.wilson_interval(10, 10)
  assert low == pytest.approx(10 / (10 + z2), abs=1e-4) and high == pytest.approx(1.0, abs=1e-4)
  # Textbook value: 95 of 100 -> (0.8883, 0.9785).
  assert mutation.wilson_interval(95, 100) == pytest.approx([0.8883, 0.9785], abs=2e-4)
  assert mutation.wilson_interval(0, 0) == [0.0, 1.0]


def test_sample_names_is_seeded_uniform_and_order_free():
  names = [f"m{i:04d}" for i in range(1000)]
  first = mutation.sample_names(names, 100, seed=3)
  assert first == mutation.sample_names(names[::-1], 100, seed=3)   # input order is irrelevant
  assert len(set(first)) == 100 and set(first) <= set(names) and first == sorted(first)
  assert first != mutation.sample_names(names, 100, seed=4)
  assert mutation.sample_names(names[:5], 100, seed=3) == names[:5]  # clipped to what exists
  assert set(mutation.sample_names(names, 40, seed=3)) <= set(first)  # nested: a prefix
  # Uniform: over many seeds every decile of the names is drawn about equally often.
  hits = [0] * 10
  for seed in range(200):
    for name in mutation.sample_names(names, 50, seed):
      hits[int(name[1:]) // 100] += 1
  assert max(hits) < 1.15 * 1000 and min(hits) > 0.85 * 1000


def test_count_reads_statuses_and_restricts_to_a_sample(tmp_path):
  stats = pytest.importorskip("mutmut.stats")
  code_of = {}
  for code, status in stats.status_by_exit_code.items():
    code_of.setdefault(status, code)
  equivalent = next(iter(mutation.EQUIVALENT))
  planted = {"a.x_f__mutmut_1": "killed", "a.x_f__mutmut_2": "killed", "a.x_f__mutmut_3": "survived",
             equivalent: "survived", "a.x_g__mutmut_1": "not checked"}
  meta = tmp_path / "mutants" / "dff_jax" / "a.py.meta"
  meta.parent.mkdir(parents=True)
  meta.write_text(json.dumps({"exit_code_by_key": {k: code_of[v] for k, v in planted.items()}}))
  result = mutation.count(tmp_path)
  assert result["counts"] == {"killed": 2, "survived": 1, "equivalent": 1, "not checked": 1}
  assert result["checked"] == 4 and result["kill_rate"] == 0.75
  assert result["survivors"] == ["a.x_f__mutmut_3"] and "partial" in result
  assert result["kill_rate_95ci"] == mutation.wilson_interval(3, 4)
  sample = mutation.count(tmp_path, ["a.x_f__mutmut_1", "a.x_f__mutmut_3"])
  assert sample["checked"] == 2 and sample["kill_rate"] == 0.5 and "partial" not in sample
