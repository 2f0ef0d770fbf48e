r"""Side-by-side overlays of several cascades on real photos spread over the yaw bins.

  python -m experiments.compare_overlays --data_dir=../shared/datasets/aflw2000_3d_dev \
      --cascade=A.npz,B.npz [--checkpoint=DIR,DIR] [--mirror=false,true] --num_faces=20 \
      --out=grid.png

Picks ``--num_faces`` AFLW2000-3D photos spread evenly over |yaw| in the bins 0-30, 30-60 and
60-90 degrees (by ``Pose_Para``, sorted, evenly spaced within each bin: deterministic), aligns
each with every cascade from the ground-truth landmark box, and writes one row per photo, one
column per cascade: the ground truth (white) and the prediction in the data set's convention
(``landmarks_3d_px``, green), with the per-face NME (bbox) printed on the tile. ``grid.json``
beside the picture lists the faces and NMEs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app
from absl import flags
from experiments import cli
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "../shared/datasets/aflw2000_3d_dev", "AFLW2000-3D folder.")
flags.DEFINE_string("cascade", None, "Comma-separated cascades ('' = the shipped default).")
flags.DEFINE_string("checkpoint", "", "Comma-separated encoders, one per cascade ('' = named).")
flags.DEFINE_string("mirror", "", "Comma-separated true/false, one per cascade: test-time "
                    "mirroring ('' = off for all).")
flags.DEFINE_integer("num_faces", 20, "Photos in the grid.")
flags.DEFINE_integer("tile", 180, "Tile side in pixels.")
flags.DEFINE_string("out", None, "Output PNG.")


def spread_over_bins(yaw_deg: np.ndarray, count: int) -> np.ndarray:
  """Indices of ``count`` faces spread over the |yaw| bins (evenly within each, by |yaw|)."""
  magnitude = np.abs(yaw_deg)
  edges = [(0, 30), (30, 60), (60, 91)]
  per_bin = [count // 3 + (1 if k < count % 3 else 0) for k in range(3)]
  chosen = []
  for (low, high), n in zip(edges, per_bin):
    members = np.nonzero((magnitude >= low) & (magnitude < high))[0]
    members = members[np.argsort(magnitude[members])]
    if len(members) and n:
      chosen.extend(members[np.linspace(0, len(members) - 1, n).round().astype(int)].tolist())
  return np.asarray(chosen, np.int64)


def main(argv):
  cli.refuse_arguments(argv)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from dff_jax import file_io, image_io, metrics  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import draw, runner, streaming  # pylint: disable=g-import-not-at-top
  from dff_jax.evaluation import alignment as alignment_eval  # pylint: disable=g-import-not-at-top
  from data_pipeline import readers  # pylint: disable=g-import-not-at-top
  try:
    pairs = readers.list_aflw2000(FLAGS.data_dir)
    annotations = [readers.read_aflw2000(mat) for _, mat in pairs]
    cascades = (FLAGS.cascade or "").split(",")
    checkpoints = (FLAGS.checkpoint or "").split(",") + [""] * len(cascades)
    mirrors = [m.strip().lower() for m in (FLAGS.mirror or "").split(",") if m.strip()]
    if any(m not in ("true", "false") for m in mirrors) or len(mirrors) > len(cascades):
      raise ValueError(f"--mirror={FLAGS.mirror}: give true or false, at most one per cascade")
    mirrors += ["false"] * (len(cascades) - len(mirrors))
    specs = [runner.resolve_aligner(c or None, None, k or None, mirror=m == "true")
             for c, k, m in zip(cascades, checkpoints, mirrors)]
  except (OSError, ValueError) as error:
    print(f"compare_overlays: error: {error}", file=sys.stderr)
    return 1
  chosen = spread_over_bins(np.array([a.yaw_deg for a in annotations]), FLAGS.num_faces)
  eval_set = alignment_eval.aflw2000_set(FLAGS.data_dir)
  jobs = [eval_set.jobs[i] for i in chosen]
  tile = FLAGS.tile
  columns, table = [], []
  for spec in specs:
    aligner = runner.load_aligner(spec)
    column = []
    for k, outcome in enumerate(streaming.run_jobs(aligner, jobs, batch_size=4, progress=False)):
      truth = annotations[chosen[k]].landmarks_px
      image = outcome.loaded.image
      predicted = outcome.face.landmarks_3d_px
      error = float(metrics.nme(predicted[None].astype(np.float64), truth[None], "bbox")[0])
      canvas = np.array(image, copy=True)
      draw.draw_discs(canvas, truth, 2.5, (255, 255, 255), filled=True)
      draw.draw_discs(canvas, predicted, 2.0, draw.VISIBLE_COLOUR, filled=True)
      box = alignment_eval.landmark_box(truth)
      side = 1.4 * max(box[2] - box[0], box[3] - box[1])
      centre = (box[:2] + box[2:]) / 2
      x0, y0 = (centre - side / 2).astype(int)
      crop = Image.fromarray(canvas).crop((x0, y0, x0 + int(side), y0 + int(side)))
      crop = np.asarray(crop.resize((tile, tile), Image.BILINEAR)).copy()
      draw.draw_text(crop, f"{annotations[chosen[k]].yaw_deg:+.0f}deg nme {error:.3f}", 3, 3,
                     (255, 255, 0))
      column.append(crop)
      table.append(dict(image=outcome.job.name, cascade=str(spec.cascade_path),
                        mirror=spec.mirror,
                        yaw_deg=annotations[chosen[k]].yaw_deg, nme=error))
    columns.append(np.concatenate(column, axis=0))
  grid = np.concatenate(columns, axis=1)
  out = Path(FLAGS.out)
  image_io.write_png_atomic(out, grid)
  file_io.write_json_atomic(out.with_suffix(".json"), table)
  print(f"wrote {out} ({len(chosen)} photos x {len(specs)} cascades)")
  return 0


if __name__ == "__main__":
  flags.mark_flag_as_required("out")
  app.run(main)
