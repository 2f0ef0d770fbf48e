r"""Multi-view (joint) against single-view alignment on held-out synthetic sets of one person.

  python -m experiments.eval_multiview --out_dir=DIR [--features=sift|dff] [--cascade=FILE] \
      [--checkpoint=DIR] [--num_sets=40] [--views=2,4,8] [--seed=50000]

Data: :class:`data_pipeline.pairs.PairSource` with pipeline seed ``--seed`` (never used in
training: the encoder uses 0 and its validation seeds, the cascades 20 000 / 30 000, the
single-view synthetic evaluation 40 000) renders ``max(--views)`` views of each identity
(shared identity and expression, independent pose over the full yaw range, lighting,
background, occluders); the render settings are those the shipped cascades were trained on
(``experiments/configs/align_cpu.py``: 192 px, face size 0.18-0.27). Each view gets a
detector-like jittered box around its true landmarks (:class:`data_pipeline.faces.BoxJitter`
defaults, as the cascade's training and ``experiments.eval_alignment``). A set of ``V`` views is
the first ``V`` views of a sample.

Methods, for every ``V`` in ``--views`` on the same sets:
  * ``single``: the cascade on each view alone (:func:`dff_jax.alignment.cascade.align_crops`);
    shape errors averaged over the ``V`` views;
  * ``joint``: :func:`dff_jax.alignment.multiview.run_multiview_cascade`, identity shared,
    expression per view;
  * ``joint_shared_expression``: the same with one expression for the set (the renders do share
    it);
  * ``single_averaged``: the mean of the single-view identity coefficients (a cheap
    competitor for the joint fit);
  * ``mean_shape``: all coefficients zero (reference).

Figures (``DIR/summary.json``):
  * ``identity_error_mm``: mean distance (mm) over the face-region vertices
    (``vertex_part == PART_FACE``) between the recovered neutral face (identity only) and the
    true neutral face after a least-squares similarity (Umeyama: rotation, translation, scale);
  * ``shape_error_mm``: the same with each view's expression in both faces (the face as seen);
  * ``nme``: landmark NME, normaliser sqrt(w*h) of the true landmarks' bounding box (all 68
    points, ``dff_jax.metrics.nme``), per view;
  * ``joint_better_fraction``: fraction of sets whose joint identity error is below the
    single-view one.

``DIR/shapes.png``: for a few sets, the true face and the recovered ones (joint with the largest
``V``, single view 0), frontal and in profile, shaded, after similarity alignment to the truth;
the colour shows the per-vertex error (grey 0 mm to red >= 4 mm).
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags

from experiments import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("out_dir", None, "Output folder.")
  flags.DEFINE_enum("features", "sift", ["dff", "sift"], "Descriptor kind.")
  flags.DEFINE_string("cascade", None, "Cascade .npz (default: the shipped "
                      "dff_jax/assets/cascade_<features>.npz).")
  flags.DEFINE_string("checkpoint", None, "DFF bundle / workdir (default: the shipped one).")
  flags.DEFINE_integer("num_sets", 40, "Identities (sets) to evaluate.")
  flags.DEFINE_string("views", "2,4,8", "Comma-separated set sizes V (each >= 1).")
  flags.DEFINE_integer("seed", 50_000, "Pipeline seed of the held-out sets.")
  flags.DEFINE_integer("num_pictures", 3, "Sets drawn in shapes.png.")
  flags.DEFINE_list("regularisations", [], "Shape-fit lambdas (mm^2) to evaluate (default: "
                    "the cascade's).")
  flags.DEFINE_list("oracle_noise_px", ["0", "2", "5"], "Noise levels of the oracle section.")
  flags.DEFINE_boolean("shared_expression", False, "Also evaluate the joint cascade with one "
                       "expression per set.")


def main(argv):
  cli.refuse_arguments(argv)
  from dff_jax import file_io  # pylint: disable=g-import-not-at-top
  if not FLAGS.out_dir:
    print("eval_multiview: error: --out_dir is required", file=sys.stderr)
    sys.exit(2)
  try:
    views = [int(v) for v in FLAGS.views.split(",") if v.strip()]
    regularisations = [float(r) for r in FLAGS.regularisations]
    noise = [float(n) for n in FLAGS.oracle_noise_px]
  except ValueError:
    print("eval_multiview: error: --views, --regularisations and --oracle_noise_px take "
          "comma-separated numbers", file=sys.stderr)
    sys.exit(2)
  try:
    from dff_jax.evaluation import multiview as multiview_eval  # pylint: disable=g-import-not-at-top
    summary = multiview_eval.evaluate_multiview(
        FLAGS.out_dir, FLAGS.features, FLAGS.cascade, FLAGS.checkpoint, FLAGS.num_sets, views,
        FLAGS.seed, FLAGS.num_pictures, regularisations, noise, FLAGS.shared_expression)
  except (OSError, ValueError) as error:
    print(f"eval_multiview: error: {file_io.error_line(error)}", file=sys.stderr)
    sys.exit(2)
  keys = ("identity_face", "identity_inner_face", "shape_face", "nme")

  def compact(section):
    return {k: {v: {m: {name: round(stats["mean"], 4) for name, stats in r.items()
                        if name in keys}
                    for m, r in entry.items() if isinstance(r, dict)}
                for v, entry in by_views.items()}
            for k, by_views in section.items()}
  print(json.dumps(dict(results=compact(summary["results"]), oracle=compact(summary["oracle"])),
                   indent=1))


if __name__ == "__main__":
  define_flags()
  app.run(main)
