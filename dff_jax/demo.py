r"""The demo, on the embedded defaults only (no ../shared): align a portrait, fit a face to
landmarks (``python -m experiments.demo``).

1. **Alignment** (:func:`run_align_demo`): the shipped DFF encoder and cascade align the faces of
   a public-domain portrait shipped in the repo (``experiments/assets/astronaut.jpg``, NASA's
   portrait of Eileen Collins, with its face box in ``astronaut.json``): writes
   ``DIR/astronaut.json`` (its ``faces``: 68 landmarks, visibility, pose, shape and expression
   coefficients of each) and ``DIR/astronaut_overlay.png``, exactly as
   ``python -m experiments.align`` does.
2. **Landmark fitting** (:func:`run_fit_demo`): synthesises a random face of the default model
   (identity ~N(0, 1), expression uniform in [0, expression_std]) at a random known pose (yaw in
   [-60, 60] deg, pitch/roll in [-10, 10] deg, seeded), takes its 68 landmarks (jaw on the
   silhouette) plus Gaussian noise of ``noise_px`` pixels, fits
   :func:`dff_jax.alignment.fit_landmarks` and reports the true and recovered pose and the
   reprojection NME (outer-eye-corner normalised, against the noise-free landmarks and against
   the noisy input). Writes ``DIR/demo_fit.png``: the true face rendered at its pose with the
   true landmarks (green) and the fitted ones (red), and the fitted face beside it.

:func:`run_demo` runs both and writes ``DIR/demo.json``; :func:`summary_text` is the short
human-readable summary the command prints. Image points are ``(x, y)`` pixels, pixel ``(i, j)``
centred at ``(j + 0.5, i + 0.5)``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np

from dff_jax import file_io

IMAGE_SIZE = 256
PORTRAIT = Path(__file__).resolve().parents[1] / "experiments" / "assets" / "astronaut.jpg"
# Reference points placed by hand on PORTRAIT (image pixels, read off a 10-px grid; about +-2 px)
# and the landmarks whose mean should land there (iBUG-68 rows). tests/test_demo.py requires
# every aligned point within 6 px (0.15 of the ~42 px inter-ocular distance).
REFERENCE_POINTS_PX = {
    "right_eye_centre": ((205.0, 102.0), slice(36, 42)),
    "left_eye_centre": ((247.0, 103.0), slice(42, 48)),
    "nose_tip": ((225.0, 128.0), slice(30, 31)),
    "mouth_centre": ((225.0, 146.0), slice(48, 68)),
    "chin": ((222.0, 178.0), slice(8, 9)),
}


def reference_point_errors_px(landmarks_px) -> Dict[str, float]:
  """Distance (pixels) of each :data:`REFERENCE_POINTS_PX` point to the mean of its aligned
  landmarks ``[68, 2]`` (image ``(x, y)`` pixels) of PORTRAIT."""
  landmarks_px = np.asarray(landmarks_px, np.float64)
  return {name: round(float(np.linalg.norm(landmarks_px[rows].mean(0) - np.asarray(point))), 3)
          for name, (point, rows) in REFERENCE_POINTS_PX.items()}


def run_align_demo(out_dir: str | Path, image: str | Path = PORTRAIT,
                   bbox: str | None = None) -> Dict[str, Any]:
  """Aligns ``image`` with the shipped defaults; ``bbox`` (``"x0,y0,x1,y1"``) defaults to the
  box stored beside the image (``<stem>.json``), else to the faces the detector finds (the first,
  best, is reported).

  Returns the written alignment document (``DIR/<stem>.json``: ``image``, ``size_wh``,
  ``faces``, ...) plus ``overlay`` and ``json``, the paths of the PNG and of the document.
  """
  from dff_jax.alignment import files  # pylint: disable=g-import-not-at-top
  image = Path(image)
  beside = image.with_suffix(".json")
  if bbox is None and beside.exists():
    bbox = ",".join(f"{v:g}" for v in json.loads(beside.read_text())["box"])
  summary = files.align_files(str(image), out_dir, bbox=bbox, progress=False)
  if summary["failed"]:
    raise ValueError(summary["failed"][0])
  stem = summary["written"][0]
  document = json.loads((Path(out_dir) / f"{stem}.json").read_text())
  document["overlay"] = str(Path(out_dir) / f"{stem}_overlay.png")
  document["json"] = str(Path(out_dir) / f"{stem}.json")
  return document


def run_demo(out_dir: str | Path, image: str | Path = PORTRAIT, bbox: str | None = None,
             seed: int = 0, noise_px: float = 1.0) -> Dict[str, Any]:
  """Both parts; the report is also written to ``DIR/demo.json``."""
  start = time.time()
  aligned = run_align_demo(out_dir, image, bbox)
  if not aligned["faces"]:
    raise ValueError(f"{image}: no face found; pass its box with --bbox=x0,y0,x1,y1")
  face = aligned["faces"][0]
  report = {
      "alignment": {"image": aligned["image"], "box": face["box"], "pose": face["pose"],
                    "box_source": aligned["box_source"], "num_faces": len(aligned["faces"]),
                    "visible_landmarks": int(sum(face["visibility"])),
                    "features": aligned["features"], "cascade": aligned["cascade"],
                    "overlay": aligned["overlay"], "json": aligned["json"]},
      "landmark_fit": run_fit_demo(out_dir, seed, noise_px),
  }
  if Path(image).resolve() == PORTRAIT.resolve():
    errors = reference_point_errors_px(face["landmarks_px"])
    report["alignment"]["reference_point_errors_px"] = errors
    report["alignment"]["max_reference_point_error_px"] = max(errors.values())
  report["seconds"] = round(time.time() - start, 2)
  file_io.write_json_atomic(Path(out_dir) / "demo.json", report)
  return report


def run_fit_demo(out_dir: str | Path, seed: int = 0, noise_px: float = 1.0,
                 face_model: str = "default") -> Dict[str, Any]:
  """Synthesise, fit, draw; returns the report (also written to ``DIR/demo_fit.json``)."""
  from data_pipeline import draw  # pylint: disable=g-import-not-at-top
  from dff_jax import geometry, image_io, metrics  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import fit_files, fitting  # pylint: disable=g-import-not-at-top
  from dff_jax.evaluation import face_models  # pylint: disable=g-import-not-at-top
  from dff_jax.face_model import model as fm  # pylint: disable=g-import-not-at-top

  start = time.time()
  model = fit_files.load_model(face_model)
  face = face_models.synthesise_landmarks(model, 1, seed, image_size=IMAGE_SIZE)
  truth = {k: v[0] for k, v in face.items()}
  rng = np.random.default_rng([seed, 1])
  observed = (truth["landmarks_px"] + noise_px * rng.normal(size=(68, 2))).astype(np.float32)
  result = fitting.fit_landmarks(model, observed)
  fitted_px = np.asarray(result.landmarks_px, np.float64)

  def pose(yaw, pitch, roll, scale, translation):
    return {"yaw_deg": float(np.degrees(yaw)), "pitch_deg": float(np.degrees(pitch)),
            "roll_deg": float(np.degrees(roll)), "scale": float(scale),
            "translation_px": np.asarray(translation, np.float64).round(3).tolist()}

  report = {
      "face_model": model.name,
      "seed": seed,
      "noise_px": noise_px,
      "true_pose": pose(truth["yaw_rad"], truth["pitch_rad"], truth["roll_rad"], truth["scale"],
                        truth["translation_px"]),
      "fitted_pose": pose(result.yaw_rad, result.pitch_rad, result.roll_rad, result.scale,
                          result.translation_px),
      "nme_vs_true_landmarks": float(metrics.nme(
          fitted_px, truth["landmarks_px"].astype(np.float64), "inter_ocular")),
      "nme_vs_noisy_input": float(metrics.nme(fitted_px, observed.astype(np.float64),
                                                     "inter_ocular")),
      "shape_coefficient_rmse": float(np.sqrt(np.mean(
          (np.asarray(result.shape_coefficients) - truth["shape_coefficients"])**2))),
  }

  # Picture: true face with true (green) and fitted (red) landmarks | the fitted face.
  true_rotation = geometry.euler_to_matrix(truth["pitch_rad"], truth["yaw_rad"], truth["roll_rad"])
  true_mesh = fm.vertices(model, truth["shape_coefficients"], truth["expression_coefficients"])
  left = face_models.render_shaded(true_mesh, model.triangles, truth["scale"],
                                           true_rotation, truth["translation_px"], IMAGE_SIZE,
                                           IMAGE_SIZE)
  fit_files.draw_landmarks(left, truth["landmarks_px"], fit_files.INPUT_COLOUR, 2.0)
  fit_files.draw_landmarks(left, fitted_px, fit_files.FITTED_COLOUR, 2.0)
  fitted_mesh = fm.vertices(model, np.asarray(result.shape_coefficients),
                            np.asarray(result.expression_coefficients))
  right = face_models.render_shaded(
      fitted_mesh, model.triangles, float(result.scale), np.asarray(result.rotation, np.float64),
      np.asarray(result.translation_px, np.float64), IMAGE_SIZE, IMAGE_SIZE)
  fit_files.draw_landmarks(right, fitted_px, fit_files.FITTED_COLOUR, 2.0)
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  image_io.write_png_atomic(out_dir / "demo_fit.png", draw.grid([left, right], columns=2))
  report["picture"] = str(out_dir / "demo_fit.png")
  report["seconds"] = round(time.time() - start, 2)
  file_io.write_json_atomic(out_dir / "demo_fit.json", report)
  return report


def write_results(path: str | Path, report: Dict[str, Any], out_dir: str | Path,
                  image: str | Path = PORTRAIT) -> None:
  """Writes :func:`run_demo`'s report to ``path`` with the sha256 of the cascade and encoder that
  aligned ``image`` (:func:`dff_jax.provenance.write_results`)."""
  from dff_jax import provenance  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import features, io  # pylint: disable=g-import-not-at-top
  document = json.loads((Path(out_dir) / f"{Path(image).stem}.json").read_text())
  cascade = document["cascade"]
  encoder = (features.encoder_for_cascade(cascade, io.read_cascade_header(cascade)["meta"])
             if document["features"] == "dff" else None)
  provenance.write_results(path, report, {"cascade": cascade, "encoder": encoder})


def summary_text(report: Dict[str, Any], out_dir: str | Path) -> str:
  """A few human-readable lines about :func:`run_demo`'s report: what was aligned, the figures
  that say it worked, where the pictures and the JSON are."""
  alignment, fit = report["alignment"], report["landmark_fit"]
  pose = alignment["pose"]

  def shown(path) -> str:  # relative to the working directory when inside it
    path = Path(path).resolve()
    try:
      return str(path.relative_to(Path.cwd()))
    except ValueError:
      return str(path)

  faces = alignment["num_faces"]
  source = alignment["box_source"]
  source = ("found by the detector" if source.startswith("detector")
            else {"given": "given"}.get(source, source))
  lines = [
      f"demo: aligned {faces} face{'s' if faces != 1 else ''} in {shown(alignment['image'])} "
      f"({alignment['features'].upper()} cascade {Path(alignment['cascade']).name}, face box "
      f"{source}):",
      f"  {'the best face: ' if faces > 1 else ''}pose yaw {pose['yaw_deg']:+.1f}, pitch "
      f"{pose['pitch_deg']:+.1f}, roll {pose['roll_deg']:+.1f} deg; "
      f"{alignment['visible_landmarks']} of 68 landmarks visible",
  ]
  if "max_reference_point_error_px" in alignment:
    lines.append(f"  hand-placed reference points (eyes, nose tip, mouth, chin) within "
                 f"{alignment['max_reference_point_error_px']:.1f} px of the landmarks")
  true_pose, fitted_pose = fit["true_pose"], fit["fitted_pose"]
  lines += [
      f"demo: fitted the {fit['face_model']} face model to the landmarks of a random face "
      f"({fit['noise_px']:g} px noise): yaw {true_pose['yaw_deg']:+.1f} -> "
      f"{fitted_pose['yaw_deg']:+.1f} deg, NME {fit['nme_vs_true_landmarks']:.4f} "
      "(outer-eye-corner normalised)",
      f"pictures: {shown(alignment['overlay'])} (landmarks, mesh, pose axes), "
      f"{shown(fit['picture'])} (true | fitted face)",
      f"JSON: {shown(alignment['json'])} (the alignment), {shown(Path(out_dir) / 'demo.json')} "
      f"(this report); {report['seconds']:.0f} s",
  ]
  return "\n".join(lines)
