"""Writes generated multi-view samples to ``.npz`` shards plus ``manifest.json``.

  python -m experiments.make_pairs --out_dir=/tmp/pairs --num_pairs=512 \
      [--config=experiments/configs/dff_tiny.py] [--config.data.image_size=64] \
      [--pairs_per_shard=256] [--num_workers=2] [--start=0]

``--config`` is an ml_collections config file; its ``data`` field (or, if it has none, the config
itself) holds :class:`data_pipeline.config.PipelineConfig` fields; without ``--config`` the
pipeline defaults are used (override single fields with ``--image_size``/``--seed``/...).
Read the result with ``data_pipeline.shards.ShardSource(out_dir)``; the manifest records the
seed, the full pipeline config, counts and every shard's sha256.
"""

from __future__ import annotations

import json

from absl import app, flags
from experiments import cli
from ml_collections import config_flags
import tqdm

from data_pipeline.config import pipeline_config_from_dict
from data_pipeline.shards import write_shards

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "ml_collections config file (optional)")
flags.DEFINE_string("out_dir", None, "output directory", required=True)
flags.DEFINE_integer("num_pairs", 1024, "samples to write")
flags.DEFINE_integer("pairs_per_shard", 256, "samples per shard")
flags.DEFINE_integer("start", 0, "first example index")
flags.DEFINE_integer("num_workers", 0, "generator processes (0 = this process)")
flags.DEFINE_bool("compress", True, "np.savez_compressed")
flags.DEFINE_integer("seed", None, "override the pipeline seed")
flags.DEFINE_integer("image_size", None, "override H = W")
flags.DEFINE_string("face_model", None, "override the face model (default | ict | sfm | PATH)")


def pipeline_values(config) -> dict:
  """Pipeline fields of an experiment config (its ``data`` field, or the config itself)."""
  if config is None:
    return {}
  data = config.get("data", config) if hasattr(config, "get") else config
  return dict(data.to_dict() if hasattr(data, "to_dict") else data)


def main(argv):
  cli.refuse_arguments(argv)
  values = pipeline_values(FLAGS.config)
  for name in ("seed", "image_size", "face_model"):
    if getattr(FLAGS, name) is not None:
      values[name] = getattr(FLAGS, name)
  config = pipeline_config_from_dict(values)
  with tqdm.tqdm(total=FLAGS.num_pairs, unit="pair", desc="make_pairs") as bar:
    manifest = write_shards(config, FLAGS.out_dir, FLAGS.num_pairs, FLAGS.pairs_per_shard,
                            FLAGS.start, FLAGS.num_workers, FLAGS.compress, progress=bar.update)
  print(json.dumps(dict(out_dir=FLAGS.out_dir, num_pairs=manifest["num_pairs"],
                        num_shards=manifest["num_shards"], seed=manifest["seed"])))


if __name__ == "__main__":
  app.run(main)
