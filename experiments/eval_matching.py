r"""Dense matching accuracy of DFF and of baseline descriptors on held-out synthetic view pairs.

  python -m experiments.eval_matching [--checkpoint=DIR] [--face_model=default,sfm] \
      [--methods=dff,sift,dense_sift,patch] --num_pairs=200 --out_dir=DIR

For every ground-truth correspondence of a pair (a surface point seen at ``points_a_px`` in view A
and ``points_b_px`` in view B, both visible: ``valid``), the descriptor at ``points_a_px``
(bilinear) is matched to the most similar descriptor (cosine) among **view B's face pixels**
(``mask`` of view B); the error is the distance in pixels between the matched pixel centre and
``points_b_px``. Reported: PCK at 1, 2, 4, 8 px, mean and median error, in bins of the pair's yaw
difference ``|yaw_a - yaw_b|`` (0-30, 30-60, 60-90, >90 degrees) plus all pairs and ">=30". All
matching is one descriptor matrix product per pair (:mod:`dff_jax.matching`).

Held-out pairs: ``data_pipeline.PairSource`` with ``--seed`` (default 50_000; training uses
``config.data.seed`` = 0 and training-time evaluation ``config.eval.seed`` = 1_000_003, so these
pairs were never seen). The other pipeline settings (image size, augmentation, yaw range, ...)
are those the checkpoint was trained with (its config.json), so only the seed (and, with
``--face_model``, the face model) changes. ``--face_model`` takes a comma-separated list:
``default`` (the embedded ICT-derived model the network is trained on), ``sfm`` (the Surrey
model from ../shared, a face model the network never saw), ``ict`` or a model file path.

Methods (``--methods``):

* ``dff``: the DFF encoder (``--checkpoint``, default the shipped bundle);
* ``sift``: OpenCV SIFT (``cv2.SIFT_create().compute``), upright, at one fixed keypoint size
  (``--sift_size``) at every face pixel of view B and at the exact sub-pixel points of view A
  (needs ``opencv-python-headless``, imported only here). OpenCV's descriptor window is 6 x the
  keypoint size wide (4 cells of 1.5 x size), so size 16 covers 96 px, most of a 128-px image.
  The default, 4 (a 24 px window), is the best of the sizes 2.67, 4, 5.33, 8, 12, 16 on 30
  held-out 128-px pairs (PCK@4px, yaw difference >= 30: 0.050, 0.053, 0.051, 0.041, 0.031,
  0.019), so the baseline is not handicapped by its scale;
* ``dense_sift``: our JAX dense SIFT (:func:`dff_jax.sift.dense_sift`, 4 px cells, 16 px
  window);
* ``patch``: raw ``--patch_size`` x ``--patch_size`` grey patches, zero-mean unit-norm (NCC).

Outputs in ``--out_dir``: ``summary.json`` (every figure, the settings and the two targets:
DFF PCK@4px at least 2x SIFT's on pairs with yaw difference >= 30 degrees, and the Surrey figure
within 20% of the default-model one), ``pck_curves.png`` (PCK against threshold 0-16 px per
method, all pairs and yaw difference >= 30, one row per face model) and
``errors_<face_model>.npz`` (per-pair errors ``errors_<method> [P, K]`` px, ``valid [P, K]``,
``yaw_difference_deg [P]``, ``face_pixels_b [P]``). ``summary.json`` also gives, per face model,
the mean number of candidate pixels and the PCK@4px of a random pick among them (chance level):
the default model's mask covers head and neck, the Surrey one the face only, so the Surrey task
has fewer candidates.
Bad input (flags included: counts below 1, ``--num_faces`` below 2, a non-positive
``--sift_size``, odd or non-positive ``--sift_cells``, ...): one line on stderr, exit status 1,
before any model is loaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app
from absl import flags

from experiments import cli

from dff_jax import descriptor_maps
from dff_jax import file_io
from dff_jax.evaluation import matching as matching_eval
from dff_jax.evaluation.matching import DEFAULT_SEED, DEFAULT_SIFT_SIZE_PX, METHODS

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_enum("dataset", "synthetic", ["synthetic", "faces68"],
                    "synthetic: held-out render pairs; faces68: cross-person matching on real "
                    "photos (dff_jax.evaluation.real_matching).")
  flags.DEFINE_string("data_dir", "../shared/datasets/faces68", "faces68: the data folder.")
  flags.DEFINE_string("split", "val", "faces68: the split.")
  flags.DEFINE_integer("num_faces", None, "faces68: the first N faces only (at least 2; "
                       "default: all).")
  flags.DEFINE_string("sift_cells", "4,8,12,16", "faces68: dense SIFT cell sizes (px, even, "
                      ">= 2) to try.")
  flags.DEFINE_string("checkpoint", None,
                      "DFF inference bundle or training workdir (default: shipped).")
  flags.DEFINE_string("face_model", "default",
                      "Comma-separated face models to render with: default, sfm, ict or paths.")
  flags.DEFINE_string("methods", ",".join(METHODS), f"Comma-separated subset of {METHODS}.")
  flags.DEFINE_integer("num_pairs", 100, "Held-out view pairs per face model.")
  flags.DEFINE_integer("seed", DEFAULT_SEED, "Pipeline seed of the held-out pairs.")
  flags.DEFINE_integer("image_size", None, "Render size (default: the encoder's training size).")
  flags.DEFINE_integer("num_correspondences", None,
                       "Correspondences per pair (default: the training config's).")
  flags.DEFINE_float("sift_size", DEFAULT_SIFT_SIZE_PX,
                     "OpenCV SIFT keypoint size in pixels, > 0 (descriptor window = 6 x size).")
  flags.DEFINE_integer("patch_size", 9, "Side of the raw-patch descriptor (odd).")
  flags.DEFINE_string("out_dir", None, "Output folder.")


def run_faces68() -> None:
  """``--dataset=faces68``: writes ``summary.json`` and prints the headline figures."""
  # The flags and the faces are checked before the encoder is loaded.
  cells = matching_eval.parse_sift_cells(FLAGS.sift_cells)
  from dff_jax.alignment import features as features_lib  # pylint: disable=g-import-not-at-top
  from dff_jax.evaluation import real_matching  # pylint: disable=g-import-not-at-top
  entries = real_matching.faces68_entries(FLAGS.data_dir, FLAGS.split, FLAGS.num_faces)
  describer = features_lib.dff_describer(FLAGS.checkpoint)
  summary = real_matching.evaluate_faces68(
      FLAGS.data_dir, FLAGS.split, {"dff": describer}, cells, FLAGS.num_faces,
      log=lambda s: print(s, file=sys.stderr, flush=True), entries=entries)
  summary["checkpoint"] = describer.source
  file_io.write_json_atomic(Path(FLAGS.out_dir) / "summary.json", summary)
  print(json.dumps({k: summary.get(k) for k in ("num_faces", "dff_over_dense_sift",
                                                 "dff_over_position_guess")}
                   | {m: r["mean"] for m, r in summary["methods"].items()}))


def main(argv):
  cli.refuse_arguments(argv)
  try:
    if not FLAGS.out_dir:
      raise ValueError("--out_dir is required")
    if FLAGS.dataset == "faces68":
      return run_faces68()
    methods = matching_eval.parse_list(FLAGS.methods, METHODS, "methods")
    face_models = matching_eval.parse_list(FLAGS.face_model, None, "face_model")
    # Checked before the encoder is loaded (eval_matching checks them again).
    matching_eval.check_settings(FLAGS.num_pairs, FLAGS.image_size, FLAGS.num_correspondences,
                                 FLAGS.sift_size, FLAGS.patch_size)
    if "sift" in methods:
      matching_eval.import_cv2()
    model = descriptor_maps.load_dff(FLAGS.checkpoint) if "dff" in methods else None
    summary = matching_eval.eval_matching(
        FLAGS.out_dir, FLAGS.num_pairs, face_models, methods, seed=FLAGS.seed,
        image_size=FLAGS.image_size, num_correspondences=FLAGS.num_correspondences,
        sift_size_px=FLAGS.sift_size, patch_size=FLAGS.patch_size, model=model,
        log=lambda s: print(s, file=sys.stderr, flush=True))
  except (OSError, ValueError) as error:
    from dff_jax.file_io import error_line  # pylint: disable=g-import-not-at-top
    sys.exit("eval_matching: error: " + error_line(error))
  brief = {fm: {m: {k: r[k] for k in ("pck@4px", "mean_error_px")}
                for m, r in ((m, v[">=30"]) for m, v in by.items())}
           for fm, by in summary["results"].items()}
  print(json.dumps(dict(out_dir=str(FLAGS.out_dir), yawdiff_ge30=brief,
                        targets=summary["targets"])))


if __name__ == "__main__":
  define_flags()
  app.run(main)
