"""The sources inside grain pipelines (2 worker processes), shards round trip, host sharding."""

import json

from absl import flags
import grain
import numpy as np
import pytest

from data_pipeline.config import PipelineConfig
from data_pipeline.pairs import PairSource, generate_sample, shard_indices
from data_pipeline.shards import ShardSource, open_source, write_shards
from data_pipeline.validate import arrays_identical

# grain reads absl flags; under pytest nobody parses them.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

TINY = PipelineConfig(image_size=32, num_correspondences=8, num_examples=64, shadows=False)


def test_pair_source_in_grain_with_two_workers():
  source = PairSource(TINY)
  ds = (grain.MapDataset.source(source).shuffle(seed=3).batch(2, drop_remainder=True)
        .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
        .mp_prefetch(grain.MultiprocessingOptions(num_workers=2)))
  iterator = iter(ds)
  batches = [next(iterator) for _ in range(3)]
  for batch in batches:
    assert batch["images"].shape == (2, 2, 32, 32, 3) and batch["images"].dtype == np.uint8
    for b in range(2):
      index = int(batch["index"][b])
      expected = generate_sample(TINY, index)
      assert arrays_identical({k: v[b] for k, v in batch.items()}, expected)
  indices = [int(i) for batch in batches for i in batch["index"]]
  assert len(set(indices)) == 6


def test_host_sharding_with_grain_shard_options():
  per_host = [shard_indices(len(PairSource(TINY)), p, 2) for p in range(2)]
  assert per_host[0][-1] + 1 == per_host[1][0]
  ds = grain.MapDataset.source(PairSource(TINY, indices=per_host[1]))
  assert int(ds[0]["index"]) == per_host[1][0]


def test_shards_round_trip_and_on_the_fly_generation(tmp_path):
  manifest = write_shards(TINY, tmp_path, num_pairs=5, pairs_per_shard=2, start=3)
  on_disk = json.loads((tmp_path / "manifest.json").read_text())
  assert on_disk["num_shards"] == 3 and on_disk["num_pairs"] == 5 and on_disk["seed"] == 0
  assert all(len(s["sha256"]) == 64 for s in manifest["shards"])
  source = ShardSource(tmp_path, verify=True)
  assert len(source) == 5
  for i in range(5):
    assert arrays_identical(source[i], generate_sample(TINY, 3 + i))
  full = open_source(tmp_path, generate_beyond=True)
  assert len(full) == TINY.num_examples
  assert arrays_identical(full[1], generate_sample(TINY, 1))  # generated on the fly
  assert arrays_identical(full[4], source[1])                 # served from a shard
  ds = grain.MapDataset.source(source).batch(5)
  assert ds[0]["points_px"].shape == (5, 2, 8, 2)
  (tmp_path / manifest["shards"][0]["file"]).write_bytes(b"corrupt")
  with pytest.raises(ValueError, match="corrupt"):
    ShardSource(tmp_path, verify=True)
