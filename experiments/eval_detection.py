r"""Evaluates the face detector by what the aligner makes of its boxes (issue 13).

  python -m experiments.eval_detection --data_dir=../shared/datasets/aflw2000_3d_dev --out_dir=DIR \
      [--num_images=N] [--num_face_free=300] [--upsample=1] [--cascade=FILE --checkpoint=DIR]

Runs :func:`dff_jax.detection.detect_faces` on the AFLW2000-3D photos and on generated face-free
images and aligns every detected box (at most ``--max_faces_per_image``, best first) with the
cascade; the figures are defined in :mod:`dff_jax.evaluation.detection`. Writes
``DIR/summary.json`` (``detector``, ``recall_by_yaw_bin``, ``oracle_recall_by_yaw_bin``,
``conditional_recall_by_yaw_bin``, ``box_recall_by_yaw_bin``, ``face_free`` with
``false_detections_per_image``, ``ms_per_image``, the box correction used) and
``DIR/per_image.jsonl``; prints the headline figures as one JSON line. About 2 min for the 1,000
dev photos on the 2-core CPU.

Other detectors' boxes can be scored the same way: ``--detections=FILE.json`` (``{image file
name: [[x0, y0, x1, y1, score], ...]}``, the detector's own boxes) with ``--detector_name`` and
``--box_correction=shift_x,shift_y,scale_w,scale_h`` (``none`` for identity); face-free images
are then read from the same file under the names ``face_free_NNNN`` (write the images with
``--write_face_free=DIR`` first), or skipped when absent.

Box correction of the shipped detector (``dff_jax.detection.BOX_CORRECTION``):

  python -m experiments.eval_detection --fit_box_correction \
      --faces68_dir=../shared/datasets/faces68 --out_dir=DIR [--detections=FILE.json]

fits it on the faces68 *training* split (``--fit_on=synthetic [--num_fit_faces=400]``: on
synthetic training renders, seed 20 000) and writes ``DIR/box_correction.json``.

Bad arguments or missing files: one line on stderr, exit status 2.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Dict

from absl import app
from absl import flags

from experiments import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the command's flags (only when run as a program)."""
  flags.DEFINE_string("data_dir", None, "AFLW2000-3D folder (imageNNNNN.jpg + .mat).")
  flags.DEFINE_string("out_dir", None, "Output folder.")
  flags.DEFINE_integer("num_images", None, "Evaluate the first N photos (default: all).")
  flags.DEFINE_integer("num_face_free", 300, "Generated face-free images.")
  flags.DEFINE_integer("max_faces_per_image", 5, "Boxes per photo given to the aligner.")
  flags.DEFINE_float("threshold", 0.10, "NME (bbox) at or below which a face counts as found.")
  flags.DEFINE_float("min_score", 0.6, "Detector score threshold (dff_jax.detection.MIN_SCORE).")
  flags.DEFINE_integer("upsample", 1, "1: whole image; 2: also 3x3 half-size tiles.")
  flags.DEFINE_bool("mirror", False, "The detector's option: scores averaged with the mirrored "
                    "image's (detect_faces(mirror=True)); not align --mirror, the cascade's.")
  flags.DEFINE_bool("cascade_mirror", False, "The cascade's test-time mirroring (align --mirror, "
                    "Aligner.load(mirror=True)).")
  flags.DEFINE_integer("batch_size", 16, "Faces per jitted alignment call.")
  flags.DEFINE_integer("refine", None, "The most extra passes for each detected face, each from "
                       "the box of the previous pass's landmarks until the crop stops moving, as "
                       "dff_jax.Aligner makes them (default 2; 0: none).")
  flags.DEFINE_string("cascade", None, "Cascade .npz (default: the shipped one).")
  flags.DEFINE_string("checkpoint", None, "DFF bundle (default: the cascade's encoder).")
  flags.DEFINE_string("detections", None, "JSON of another detector's boxes (see docstring).")
  flags.DEFINE_string("detector_name", None, "Name of the --detections detector.")
  flags.DEFINE_string("box_correction", None, "shift_x,shift_y,scale_w,scale_h[,4 *_turn "
                      "slopes[,roll_fill]] or none (default: the shipped one; none for "
                      "--detections).")
  flags.DEFINE_bool("fit_box_correction", False, "Fit the box correction on faces68 train.")
  flags.DEFINE_enum("fit_on", "faces68", ["faces68", "synthetic"], "--fit_box_correction data: "
                    "the faces68 train split or synthetic training renders (seed 20000).")
  flags.DEFINE_string("faces68_dir", None, "faces68 folder (--fit_box_correction).")
  flags.DEFINE_integer("num_fit_faces", None, "Fit on the first N training faces (default all).")
  flags.DEFINE_string("write_face_free", None, "Write the face-free images as PNGs here and stop.")


def main(argv):
  cli.refuse_arguments(argv)
  from dff_jax import file_io  # pylint: disable=g-import-not-at-top
  from dff_jax.evaluation import detection as evaluation  # pylint: disable=g-import-not-at-top
  try:
    if FLAGS.write_face_free:
      out = evaluation.write_face_free_images(FLAGS.write_face_free, FLAGS.num_face_free)
      print(json.dumps(dict(written=FLAGS.num_face_free, dir=str(out))))
      return
    if not FLAGS.out_dir:
      raise ValueError("--out_dir is required")
    detect, table, name, correction = evaluation.make_detector(
        FLAGS.detections, FLAGS.box_correction, FLAGS.detector_name, FLAGS.min_score,
        FLAGS.upsample, FLAGS.mirror)
    if FLAGS.fit_box_correction:
      if FLAGS.fit_on == "faces68" and not FLAGS.faces68_dir:
        raise ValueError("--fit_box_correction needs --faces68_dir (or --fit_on=synthetic)")
      if FLAGS.detections:
        raw = evaluation.external_detector(FLAGS.detections,
                                           evaluation.parse_correction("none"))[0]
      else:
        raw = lambda image, n: detect(image, n, corrected=False, keypoints=True)  # pylint: disable=unnecessary-lambda-assignment
      if FLAGS.fit_on == "faces68":
        faces = evaluation.faces68_faces(FLAGS.faces68_dir, "train", FLAGS.num_fit_faces)
        data = "faces68 train split"
      else:
        from dff_jax.alignment import runner  # pylint: disable=g-import-not-at-top
        meta = runner.resolve_aligner(FLAGS.cascade, None, FLAGS.checkpoint).header.get("meta", {})
        faces = evaluation.synthetic_faces(FLAGS.num_fit_faces or 400, data=meta.get("data"))
        data = (f"synthetic training renders (seed 20000, {FLAGS.num_fit_faces or 400} faces, "
                "the cascade's data settings)")
      fit = evaluation.fit_box_correction(faces, raw)
      fit.update(detector=name, data=data, min_score=FLAGS.min_score)
      file_io.write_json_atomic(Path(FLAGS.out_dir) / "box_correction.json", fit)
      print(json.dumps(fit))
      return
    if not FLAGS.data_dir:
      raise ValueError("--data_dir is required (an AFLW2000-3D folder)")
    from dff_jax import provenance  # pylint: disable=g-import-not-at-top
    from dff_jax.alignment import runner  # pylint: disable=g-import-not-at-top
    aligner = runner.load_aligner(runner.resolve_aligner(FLAGS.cascade, None, FLAGS.checkpoint,
                                                         mirror=FLAGS.cascade_mirror))
    num_face_free = FLAGS.num_face_free
    if table is not None and "face_free_0000" not in table:
      num_face_free = 0
    summary: Dict[str, Any] = dict(
        detector=name, box_correction=correction, min_score=FLAGS.min_score,
        upsample=FLAGS.upsample if table is None else None,
        mirror=FLAGS.mirror if table is None else None, cascade_mirror=FLAGS.cascade_mirror,
        data_dir=FLAGS.data_dir, cascade=str(aligner.spec.cascade_path),
        cascade_sha256=hashlib.sha256(Path(aligner.spec.cascade_path).read_bytes()).hexdigest(),
        models=provenance.model_files({
            "cascade": aligner.spec.cascade_path, "encoder": aligner.describer.source,
            "face_model": provenance.face_model_path(aligner.spec.face_model)}),
        command=" ".join(["python -m experiments.eval_detection"] + sys.argv[1:]))
    summary.update(evaluation.evaluate_detection(
        FLAGS.data_dir, detect, aligner, num_images=FLAGS.num_images,
        num_face_free=num_face_free, max_faces_per_image=FLAGS.max_faces_per_image,
        threshold=FLAGS.threshold, batch_size=FLAGS.batch_size, refine=FLAGS.refine))
  except (OSError, ValueError, KeyError) as error:
    print(f"eval_detection: error: {file_io.error_line(error)}", file=sys.stderr)
    sys.exit(2)
  per_image = summary.pop("per_image")
  out = Path(FLAGS.out_dir)
  file_io.write_text_atomic(out / "per_image.jsonl",
                            "".join(json.dumps(row) + "\n" for row in per_image))
  file_io.write_json_atomic(out / "summary.json", summary)
  keys = ("detector", "recall_by_yaw_bin", "oracle_recall_by_yaw_bin",
          "conditional_recall_by_yaw_bin", "box_recall_by_yaw_bin")
  headline = {k: summary[k] for k in keys}
  headline["false_detections_per_face_free_image"] = summary["face_free"][
      "false_detections_per_image"]
  headline["ms_per_image"] = summary["ms_per_image"]["median"]
  print(json.dumps(headline))


if __name__ == "__main__":
  define_flags()
  app.run(main)
