r"""Evaluates alignment cascades: NME by yaw bin, failure rates, AUC, CED plot, per-image errors.

  python -m experiments.eval_alignment --dataset=synthetic|300w|aflw2000|faces68 [--data_dir=DIR] \
      [--cascade=FILE[,FILE...]] [--features=dff|sift] [--checkpoint=DIR] [--num_faces=N] \
      [--batch_size=8] --out_dir=DIR

Protocols (all NMEs on the 68 iBUG points, as fractions):
  * ``synthetic``: held-out faces of :class:`data_pipeline.faces.FaceSource` (pipeline seed
    ``--seed``, default 40 000, disjoint from the cascade's training 20 000 and evaluation 30 000
    seeds; rendered as the cascade was trained (its file's ``data`` / ``box_jitter`` meta: image
    size, face size range, box jitter; older files: ``--image_size``, default the crop size), with
    ``--render_face_model`` (default the aligner's; ``sfm`` tests a face model the regressors
    never saw), with detector-like jittered boxes; yaw from the rendering
    pose; normaliser ``bbox`` (sqrt(w*h) of the ground-truth landmark box). ``--num_faces``
    defaults to 200.
  * ``aflw2000``: AFLW2000-3D folder (``imageNNNNN.jpg`` + ``.mat``), all 68 projected 3D
    landmarks; the face box given to the aligner is the ground-truth landmark bounding box (the
    usual protocol); normaliser ``bbox`` of the ground-truth landmarks; yaw from ``Pose_Para`` in
    our convention (:func:`data_pipeline.readers.read_aflw2000`).
  * ``faces68``: a faces68-layout folder (``images/<name>.jpg`` + ``--split`` json, default
    ``val``, or ``--faces_json=FILE``; ``--sources=a,b`` keeps those sources' faces): as
    ``300w`` (outline jaw, inter-ocular NME, estimated yaw, landmark box).
  * ``300w``: a 300W-style folder (images + same-stem ``.pts``, searched recursively); face box
    = ground-truth landmark bounding box; normaliser ``inter_ocular`` (outer eye corners 36, 45);
    300W has no pose annotation, so the yaw of the bins is *estimated* by fitting the 3DMM to
    the ground-truth landmarks (:func:`dff_jax.alignment.fit_landmarks`), which summary.json says
    under ``yaw_source``.

Face boxes (``--boxes``): ``landmarks`` (default) is each protocol's box above; ``dlib`` gives
every method the box of dlib's HOG face detector that overlaps the annotation most (IoU at least
0.3; faces it misses are left out and counted, ``num_faces_without_box``), the protocol of the
widely used predictor on its own detector's boxes; ``FILE.json`` does the same with any other
detector's boxes (the layout of ``align --boxes``: image name, path or stem -> a box or a
list). From a detector's box our methods align as ``align`` does
(``--box_convention=detector``: up to twice more from their own landmarks' box, until the crop
stops moving; ``--refine`` and ``--refine_min_change`` override). ``--compare_dlib`` scores
dlib's 68-point predictor on the same faces and boxes as a method ``dlib`` (its jaw is the
outline, also where a set scores the 3D jaw).
dlib is optional: ``pip install -r requirements-compare.txt``.

Landmark conventions: ``aflw2000`` is scored on ``landmarks_3d_px`` (the fitted model's fixed 68
landmark vertices projected: the 3D jaw line its annotation uses); every other set on
``landmarks_px`` (the jaw on the visible outline); ``summary.json`` names it
(``landmark_convention``). Renders of the aligner's own face model (``synthetic``, unless
``--render_face_model`` names another) are scored in both: their labels are exact in either
convention, so each method's ``landmarks_3d`` block scores ``landmarks_3d_px`` against each
render's fixed 3D landmarks (the NME figures, ``nme_by_region`` included, by the 3D landmarks'
box), beside the outline scores at the top level.

Several comma-separated cascades are evaluated on the same faces (e.g. DFF and SIFT); each is a
method named by its features (plus the file stem when two share features).

Outputs in ``DIR`` (atomically written):
  * ``summary.json``: ``dataset``, ``normaliser``, ``yaw_source``, ``box_protocol``, and for the
    first method at the top level ``nme_mean``, ``nme_by_yaw_bin`` (``"0-30"``, ``"30-60"``,
    ``"60-90"`` on |yaw| in degrees, [0, 30), [30, 60), [60, 90]), ``nme_yaw_bin_mean``,
    ``failure_rate_0.08``, ``failure_rate_0.10``, ``auc_0.08``, ``num_faces``, ``nme_by_region``
    (jaw, brows, nose, eyes, mouth: each region's points over the whole face's normaliser, mean
    and by yaw bin), ``yaw_error_deg`` and ``systematic_error`` (the NME left once each point's
    mean offset is removed, and regions' mean vertical offsets, by yaw bin:
    ``dff_jax.evaluation.alignment.systematic_error_summary``); every method's
    figures under ``methods``; ``skipped`` (one-line messages of unreadable faces);
    ``image_decode`` (photos decoded as ``align`` decodes them: ``grey`` luma when every method
    reads only the luma, else ``rgb``).
  * ``errors.jsonl``: one line per face and method: ``image``, ``method``, ``nme``, ``yaw_deg``.
  * ``ced.png``: cumulative error distribution of each method up to NME 0.10 (dashed line at 0.08).

Bad arguments or a missing cascade / checkpoint: one line on stderr, exit status 2, before
anything is loaded. A run that scores no face (every face unreadable or without a box) writes
its summary, then says why in one line on stderr, exit status 2.
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags
from dff_jax.evaluation import alignment as alignment_eval
from dff_jax.evaluation.alignment import DATASETS, SYNTHETIC_SEED

from experiments import cli

FLAGS = flags.FLAGS
# The command as a function (same arguments as the flags); returns the summary it writes.
evaluate = alignment_eval.evaluate


def define_flags() -> None:
  """Defines the command's flags (only when run as a program)."""
  flags.DEFINE_enum("dataset", None, list(DATASETS), "Evaluation set.")
  flags.DEFINE_string("data_dir", None, "Data folder (300w / aflw2000 / faces68).")
  flags.DEFINE_string("split", "val", "faces68: the split (<data_dir>/<split>.json).")
  flags.DEFINE_string("faces_json", None, "faces68: another json of faces in that layout.")
  flags.DEFINE_list("sources", None, "faces68: only the faces of these source fields "
                    "(e.g. helen-train,afw).")
  flags.DEFINE_string("cascade", None, "Cascade .npz, or several comma-separated "
                      "(default: the shipped cascade for --features).")
  flags.DEFINE_enum("features", None, ["dff", "sift"], "Descriptor kind (default: the cascade's).")
  flags.DEFINE_string("checkpoint", None, "DFF inference bundle or training workdir.")
  flags.DEFINE_string("face_model", None, "Face model (default: the cascade's).")
  flags.DEFINE_integer("num_faces", None, "Evaluate the first N faces (synthetic default 200; "
                       "real data sets: all).")
  flags.DEFINE_integer("seed", SYNTHETIC_SEED, "Synthetic pipeline seed (held out).")
  flags.DEFINE_integer("image_size", None, "Synthetic image size (default: the cascade's training "
                       "renders, else its crop size).")
  flags.DEFINE_string("render_face_model", None, "Synthetic: the face model the faces are "
                      "rendered with (default: the aligner's; e.g. sfm for a model it never saw).")
  flags.DEFINE_integer("batch_size", 8, "Faces per jitted batch.")
  flags.DEFINE_bool("mirror", False, "Test-time mirroring: align each face and its left-right "
                    "mirror image and combine the two (twice the work).")
  flags.DEFINE_string("boxes", "landmarks", "Face boxes given to every method: landmarks (the "
                      "set's own: the ground-truth landmark box on photos), dlib (dlib's HOG "
                      "detector's box overlapping the annotation; optional "
                      "requirements-compare.txt) or FILE.json (another detector's boxes, as "
                      "align --boxes takes them).")
  flags.DEFINE_integer("refine", None, "Extra passes of our methods for each face, each from "
                       "the box of the previous pass's landmarks_px (default: as align does: "
                       "0 from landmark boxes, up to 2 from a detector's).")
  flags.DEFINE_float("refine_min_change", None, "The refinement stops once the next crop moves "
                     "by at most this fraction of its side (a finite number >= 0; default: the "
                     "aligner's, 0.05; 0: every pass is run).")
  flags.DEFINE_bool("compare_dlib", False, "Also score dlib's 68-point predictor on the same "
                    "faces and boxes (method dlib; optional requirements-compare.txt).")
  flags.DEFINE_string("dlib_predictor", None, "dlib's 68-point model file (default: the "
                      "face_recognition_models package's).")
  flags.DEFINE_integer("fit_modes", None, "Solve each stage's shape fit in this many directions "
                       "of the coefficient space instead of the cascade's own (to measure what "
                       "the fit's size costs).")
  flags.DEFINE_enum("matmul_dtype", None, ["float32", "bfloat16"], "Operand dtype of the DFF "
                    "encoder's matrix products (align --matmul_dtype; default: the encoder's "
                    "own, float32).")
  flags.DEFINE_string("out_dir", None, "Output folder.")


def main(argv):
  cli.refuse_arguments(argv)
  if not FLAGS.dataset or not FLAGS.out_dir:
    print("eval_alignment: error: --dataset and --out_dir are required", file=sys.stderr)
    sys.exit(2)
  try:
    summary = evaluate(FLAGS.dataset, FLAGS.out_dir, FLAGS.data_dir, FLAGS.cascade,
                       FLAGS.features, FLAGS.checkpoint, FLAGS.face_model, FLAGS.num_faces,
                       FLAGS.seed, FLAGS.image_size, FLAGS.batch_size,
                       render_face_model=FLAGS.render_face_model, split=FLAGS.split,
                       faces_json=FLAGS.faces_json, mirror=FLAGS.mirror, sources=FLAGS.sources,
                       boxes=FLAGS.boxes, refine=FLAGS.refine, compare_dlib=FLAGS.compare_dlib,
                       dlib_predictor=FLAGS.dlib_predictor,
                       refine_min_change=FLAGS.refine_min_change, fit_modes=FLAGS.fit_modes,
                       matmul_dtype=FLAGS.matmul_dtype)
  except (OSError, ValueError) as error:
    from dff_jax.file_io import error_line  # pylint: disable=g-import-not-at-top
    print(f"eval_alignment: error: {error_line(error)}", file=sys.stderr)
    sys.exit(2)
  nothing = alignment_eval.nothing_scored_message(summary, FLAGS.boxes)
  if nothing:  # the (empty) summary is written; the run still failed
    print(f"eval_alignment: error: {nothing} (summary: {FLAGS.out_dir}/summary.json)",
          file=sys.stderr)
    sys.exit(2)
  keys = ("dataset", "method", "landmark_convention", "normaliser", "num_faces", "nme_mean", "nme_by_yaw_bin",
          "nme_yaw_bin_mean", "failure_rate_0.08", "failure_rate_0.10", "auc_0.08")
  print(json.dumps({k: summary.get(k) for k in keys}))


if __name__ == "__main__":
  define_flags()
  app.run(main)
