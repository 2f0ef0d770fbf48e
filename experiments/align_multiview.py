r"""Aligns several images of ONE person jointly: shared identity, per-view pose and landmarks.

  python -m experiments.align_multiview --images=IMG1,IMG2,...|DIR|GLOB --out_dir=DIR \
      [--bbox=x0,y0,x1,y1 | --boxes=FILE.json] [--cascade=FILE] [--features=dff|sift] \
      [--checkpoint=DIR] [--face_model=default|PATH] [--share_expression] [--noprior_per_view]

(the same as ``experiments.align --multiview``, whose flags it takes.) The images, boxes,
cascade, features, checkpoint and face model are given as for ``experiments.align``. All the
images are one set: the cascade of :mod:`dff_jax.alignment.multiview` runs on all of them at
once, its shape fit stacking every view's landmark equations with one identity vector (and, with
``--share_expression``, one expression vector). By default the identity prior is counted once
per image (``prior_per_view``, see :func:`dff_jax.alignment.multiview.fit_joint_shape_rows`):
with the SIFT cascade the plain MAP weighting (``--noprior_per_view``) recovers the 3D shape
worse than single-view alignment, because the cascade's landmark errors are correlated across
views; ``experiments/eval_multiview.py`` measures both.

Without a box, each image's best face (highest detector score) is the view; ``--bbox`` /
``--boxes`` give one box per image (or ``whole``).

Outputs (written atomically):
  * ``DIR/<stem>.json`` per image, as ``experiments.align`` (``image``, ``size_wh``, ``faces``
    with one face: ``landmarks_px``, ..., ``shape_coefficients`` (the shared identity),
    ``expression_coefficients`` (the view's), ``box``, ``score``, ``crop_box``; ``features``,
    ``cascade``, ``face_model``) plus ``multiview: true``, ``share_expression`` and
    ``prior_per_view``;
  * ``DIR/<stem>_overlay.png`` per image (see ``experiments.align``);
  * ``DIR/multiview.json``: ``shape_coefficients`` (shared), ``share_expression``, ``views``
    (``stem``, ``image``, ``json``, ``expression_coefficients``, ``pose``), ``features``,
    ``cascade``, ``face_model``.

An image that cannot be read, whose box is bad or where no face is found is reported in one
line and left out of the set (exit status 1); bad arguments, no usable image, or a missing
cascade / checkpoint give one line ``align_multiview: error: ...`` and exit status 2.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from absl import app
from absl import flags
from dff_jax import file_io

FLAGS = flags.FLAGS
_COMPILED: Dict[Any, Any] = {}


def _jitted(aligner, num_views: int, share_expression: bool, prior_per_view: bool):
  """The jitted multi-view cascade for ``num_views`` working images (cached per aligner)."""
  import jax  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import multiview  # pylint: disable=g-import-not-at-top
  key = (id(aligner), num_views, bool(share_expression), bool(prior_per_view))
  if key not in _COMPILED:
    describer, config = aligner.describer, aligner.config

    def run(describer_params, alignment_model, params, images, boxes):
      return multiview.align_multiview_images(
          lambda crops: describer.apply(describer_params, crops), alignment_model, params, images,
          boxes, config, share_expression, prior_per_view=prior_per_view)
    while len(_COMPILED) >= 4:
      _COMPILED.pop(next(iter(_COMPILED)))
    _COMPILED[key] = jax.jit(run)
  return _COMPILED[key]


def align_multiview_files(images: str, out_dir: str | Path, bbox: Optional[str] = None,
                          boxes: Optional[str] = None, cascade: Optional[str] = None,
                          checkpoint: Optional[str] = None, features: Optional[str] = None,
                          face_model: Optional[str] = None, share_expression: bool = False,
                          overlay: bool = True, report=None,
                          prior_per_view: bool = True) -> Dict[str, Any]:
  """The command as a function.

  Args:
    images, bbox, boxes, cascade, checkpoint, features, face_model: as for
      ``experiments.align.align_files`` (``None`` = the defaults there).
    out_dir: output folder (created).
    share_expression: one expression vector for all images.
    prior_per_view: count the identity prior once per image (default) instead of once.
    overlay: write the overlay PNGs.
    report: ``callable(message)`` for per-image failures (default: print to stderr).

  Returns:
    ``{"out_dir", "written": [stems], "failed": [one-line messages], "shape_coefficients":
    [Ki] list}``.

  Raises:
    FileNotFoundError / ValueError: bad arguments, no usable image, missing cascade / checkpoint
      (one-line messages; nothing written).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from dff_jax import image_io  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import draw  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import results  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import runner  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import streaming  # pylint: disable=g-import-not-at-top
  if report is None:
    def report(message):
      print(message, file=sys.stderr, flush=True)
  if bbox and boxes:
    raise ValueError("pass either --bbox or --boxes, not both")
  paths, skipped = streaming.find_images(images)
  if skipped:
    report(f"align_multiview: warning: {streaming.skipped_files_line(skipped)}")
  common_box = streaming.parse_bbox(bbox) if bbox else None
  box_map = streaming.read_boxes_file(boxes) if boxes else None
  spec = runner.resolve_aligner(cascade, features, checkpoint, face_model)
  aligner = runner.load_aligner(spec)
  stems = streaming.output_stems(paths)

  failed: List[str] = []
  views = []  # (path, stem, image, box, crop_box, work_image, work_box)
  for path, stem in zip(paths, stems):
    try:
      if box_map is not None:
        found, box = streaming.box_for(box_map, path)
        if not found:
          raise ValueError(f"{path}: no entry for {path.name} in --boxes file {boxes}")
      else:
        box = common_box
      image = image_io.read_image(path)
      found, scores = runner.face_boxes(image, box, aligner.config.box_scale, str(path))
      if len(found) != 1 and box is not None and not isinstance(box, str):
        raise ValueError(f"{path}: give one face box per image with --multiview, got "
                         f"{len(found)}")
      if not len(found):
        raise ValueError(f"{path}: no face found (pass its box with --bbox / --boxes)")
      box, score = found[0], scores[0]  # the detector's best face when no box was given
      work_image, crop_box, work_box = runner.working_crop(image, box, aligner.config,
                                                           aligner.work_size)
    except streaming.READ_ERRORS as error:
      message = streaming.one_line(error)
      if str(path) not in message:
        message = f"{path}: {message}"
      failed.append(message)
      report(f"align_multiview: skipped {message}")
      continue
    views.append((path, stem, image, box, crop_box, work_image, work_box, score))
  if not views:
    raise ValueError(f"--images={images}: none of the {len(paths)} images could be used "
                     "(see the messages above)")

  run = _jitted(aligner, len(views), share_expression, prior_per_view)
  result = run(aligner.describer.params, aligner.alignment_model, aligner.params,
               np.stack([v[5] for v in views]), np.stack([v[6] for v in views]).astype(np.float32))
  result = {k: np.asarray(v) for k, v in dataclasses.asdict(jax.device_get(result)).items()}
  faces = [runner.to_image_frame(result, n, v[4], v[3], aligner.work_size, v[7])
           for n, v in enumerate(views)]
  if not all(face.is_finite() for face in faces):
    raise ValueError(f"--images={images}: the joint alignment diverged (non-finite result)")

  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  outline = draw.mesh_outline_structure(aligner.face_model) if overlay else None
  common = dict(features=aligner.spec.features, cascade=str(aligner.spec.cascade_path),
                face_model=aligner.face_model.name)
  shape = np.asarray(faces[0].shape_coefficients, np.float32)
  written: List[str] = []
  entries = []
  for (path, stem, image, *_), face in zip(views, faces):
    face = dataclasses.replace(face, shape_coefficients=shape)  # the shared identity
    document = results.image_document(
        path, (image.shape[1], image.shape[0]), [face], multiview=True,
        share_expression=bool(share_expression), prior_per_view=bool(prior_per_view), **common)
    if overlay:
      picture = draw.render_faces_overlay(image, [face], aligner.face_model, outline)
      image_io.write_png_atomic(out_dir / f"{stem}_overlay.png", np.asarray(picture, np.uint8))
    file_io.write_json_atomic(out_dir / f"{stem}.json", document)
    written.append(stem)
    entries.append(dict(stem=stem, image=str(path), json=f"{stem}.json",
                        expression_coefficients=document["faces"][0]["expression_coefficients"],
                        pose=document["faces"][0]["pose"]))
  file_io.write_json_atomic(out_dir / "multiview.json", dict(
      shape_coefficients=shape.astype(np.float64).tolist(),
      share_expression=bool(share_expression), prior_per_view=bool(prior_per_view),
      num_views=len(views), views=entries, skipped=failed, **common))
  return {"out_dir": str(out_dir), "written": written, "failed": failed,
          "shape_coefficients": shape.astype(np.float64).tolist()}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.images or not FLAGS.out_dir:
    print("align_multiview: error: --images and --out_dir are required", file=sys.stderr)
    sys.exit(2)
  run_from_flags(FLAGS, "align_multiview")


def run_from_flags(flag_values, command: str) -> None:
  """Runs :func:`align_multiview_files` from parsed flags (this module's, or
  ``experiments.align --multiview``); prints the JSON line, exits 1 if an image failed and 2
  (one line ``<command>: error: ...``) on bad arguments."""
  try:
    summary = align_multiview_files(
        flag_values.images, flag_values.out_dir, flag_values.bbox, flag_values.boxes,
        flag_values.cascade, flag_values.checkpoint, flag_values.features,
        flag_values.face_model, flag_values.share_expression, flag_values.overlay,
        prior_per_view=flag_values.prior_per_view)
  except (OSError, ValueError) as error:
    print(f"{command}: error: {file_io.error_line(error)}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps({"out_dir": summary["out_dir"], "written": len(summary["written"]),
                    "failed": len(summary["failed"])}))
  if summary["failed"]:
    sys.exit(1)


if __name__ == "__main__":
  from experiments import align  # pylint: disable=g-import-not-at-top
  align.define_flags()  # The same flags as experiments.align (its --multiview ones included).
  app.run(main)
