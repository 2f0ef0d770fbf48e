"""Shard writer and reader for generated samples (NumPy ``.npz`` + ``manifest.json``).

Layout of a data directory::

  DIR/manifest.json           seed, pipeline config, counts, fields, per-shard sha256
  DIR/shard-00000-of-00004.npz  every sample field stacked over the shard's pairs ([n, ...])

:func:`write_shards` generates samples ``[start, start + num_pairs)`` of a config (optionally
with worker processes) and writes them; :class:`ShardSource` serves them through the same
random-access interface as :class:`data_pipeline.pairs.PairSource` (``len``, ``[i]``, picklable,
usable by ``grain.MapDataset.source``), and with ``generate_beyond=True`` it generates on the fly
every index the shards do not hold (same config, same seed, hence the same samples).
:func:`open_source` picks one or the other from a path or a config.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import multiprocessing
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from data_pipeline.config import PipelineConfig, pipeline_config_from_dict
from data_pipeline.pairs import PairSource, Sample, generate_sample

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def sha256_of(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def stack_samples(samples: Sequence[Sample]) -> Dict[str, np.ndarray]:
  """Stacks sample dicts field by field: ``{name: [n, ...]}``."""
  return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


def _generate_range(args) -> Dict[str, np.ndarray]:
  config_dict, first, count = args
  config = pipeline_config_from_dict(config_dict)
  source = PairSource(config)
  return stack_samples([source[i] for i in range(first, first + count)])


def write_shards(config: PipelineConfig, out_dir: Union[str, Path], num_pairs: int,
                 pairs_per_shard: int = 256, start: int = 0, num_workers: int = 0,
                 compress: bool = True,
                 progress: Optional[Callable[[int], None]] = None) -> dict:
  """Generates samples ``start .. start + num_pairs - 1`` and writes shards + manifest.

  Args:
    config: pipeline config (its ``num_examples`` must cover the indices).
    out_dir: output directory (created).
    num_pairs: samples to write (>= 1).
    pairs_per_shard: samples per ``.npz`` shard.
    start: first example index.
    num_workers: worker processes generating shards (0 = this process).
    compress: ``np.savez_compressed`` (smaller, slower) or ``np.savez``.
    progress: called with the number of pairs finished after each shard (e.g. tqdm.update).

  Returns:
    the manifest dict (also written to ``out_dir/manifest.json``).
  """
  if num_pairs < 1 or pairs_per_shard < 1:
    raise ValueError(f"num_pairs and pairs_per_shard must be >= 1, got {num_pairs}, "
                     f"{pairs_per_shard}")
  if start + num_pairs > config.num_examples:
    config = config.replace(num_examples=start + num_pairs)
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  num_shards = (num_pairs + pairs_per_shard - 1) // pairs_per_shard
  jobs = [(config.to_dict(), start + s * pairs_per_shard,
           min(pairs_per_shard, num_pairs - s * pairs_per_shard)) for s in range(num_shards)]
  save = np.savez_compressed if compress else np.savez
  shards: List[dict] = []
  fields = None

  def write(s, arrays):
    nonlocal fields
    name = f"shard-{s:05d}-of-{num_shards:05d}.npz"
    save(out / name, **arrays)
    shards.append(dict(file=name, first_index=jobs[s][1], num_pairs=jobs[s][2],
                       sha256=sha256_of(out / name)))
    if fields is None:
      fields = {k: dict(shape=list(v.shape[1:]), dtype=str(v.dtype)) for k, v in arrays.items()}
    if progress is not None:
      progress(jobs[s][2])

  if num_workers > 0:
    with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
      for s, arrays in enumerate(pool.imap(_generate_range, jobs)):
        write(s, arrays)
  else:
    for s, job in enumerate(jobs):
      write(s, _generate_range(job))
  manifest = dict(
      format_version=FORMAT_VERSION, seed=config.seed, config=config.to_dict(),
      start_index=start, num_pairs=num_pairs, pairs_per_shard=pairs_per_shard,
      num_shards=num_shards, fields=fields, shards=shards,
      created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
  (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
  return manifest


def read_manifest(path: Union[str, Path]) -> dict:
  """The manifest of a data directory (or of the ``manifest.json`` path itself)."""
  path = Path(path)
  if path.is_dir():
    path = path / MANIFEST
  if not path.exists():
    raise ValueError(f"{path} does not exist: write shards with `python -m experiments.make_pairs`")
  return json.loads(path.read_text())


class ShardSource:
  """Random access over written shards; optionally generates the indices they do not hold.

  ``source[i]`` is example ``start_index + i`` of the manifest's config. With
  ``generate_beyond=True``, ``len`` is the config's ``num_examples`` and indices outside the
  written range are generated (identical to what the writer would have written).
  """

  def __init__(self, directory: Union[str, Path], generate_beyond: bool = False,
               verify: bool = False):
    self.directory = Path(directory)
    self.manifest = read_manifest(self.directory)
    self.config = pipeline_config_from_dict(self.manifest["config"])
    self.generate_beyond = generate_beyond
    shards = self.manifest["shards"]
    self._firsts = np.asarray([s["first_index"] for s in shards], np.int64)
    self._counts = np.asarray([s["num_pairs"] for s in shards], np.int64)
    self._start = int(self.manifest["start_index"])
    self._cache_key = None
    self._cache = None
    if verify:
      self.verify()

  def verify(self) -> None:
    """Raises ``ValueError`` when a shard is missing or its sha256 differs from the manifest."""
    for shard in self.manifest["shards"]:
      path = self.directory / shard["file"]
      if not path.exists() or sha256_of(path) != shard["sha256"]:
        raise ValueError(f"shard {path} is missing or corrupt (sha256 mismatch)")

  def __len__(self) -> int:
    if self.generate_beyond:
      return self.config.num_examples
    return int(self.manifest["num_pairs"])

  def _load(self, shard: int) -> Dict[str, np.ndarray]:
    if self._cache_key != shard:
      with np.load(self.directory / self.manifest["shards"][shard]["file"]) as data:
        self._cache = {k: data[k] for k in data.files}
      self._cache_key = shard
    return self._cache

  def __getitem__(self, i) -> Sample:
    i = int(i)
    n = len(self)
    if not -n <= i < n:
      raise IndexError(f"index {i} out of range for ShardSource of length {n}")
    i %= n
    index = i if self.generate_beyond else self._start + i
    shard = int(np.searchsorted(self._firsts, index, side="right")) - 1
    if shard < 0 or index >= self._firsts[shard] + self._counts[shard]:
      return generate_sample(self.config, index)
    arrays = self._load(shard)
    return {k: v[index - self._firsts[shard]] for k, v in arrays.items()}

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_cache_key"] = None
    state["_cache"] = None
    return state

  def __iter__(self) -> Iterator[Sample]:
    for i in range(len(self)):
      yield self[i]


def open_source(spec: Union[str, Path, PipelineConfig], **kwargs):
  """A random-access source from a data directory (``ShardSource``) or a config (``PairSource``)."""
  if isinstance(spec, PipelineConfig):
    return PairSource(spec)
  return ShardSource(spec, **kwargs)
