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
    ``val``, or ``--faces_json=FILE``): as ``300w`` (outline jaw, inter-ocular NME, estimated
    yaw, landmark box).
  * ``300w``: a 300W-style folder (images + same-stem ``.pts``, searched recursively); face box
    = ground-truth landmark bounding box; normaliser ``inter_ocular`` (outer eye corners 36, 45);
    300W has no pose annotation, so the yaw of the bins is *estimated* by fitting the 3DMM to
    the ground-truth landmarks (:func:`dff_jax.alignment.fit_landmarks`), which summary.json says
    under ``yaw_source``.

Landmark conventions: ``aflw2000`` is scored on ``landmarks_3d_px`` (the fitted model's fixed 68
landmark vertices projected: the 3D jaw line its annotation uses); every other set on
``landmarks_px`` (the jaw on the visible outline); ``summary.json`` names it
(``landmark_convention``).

Several comma-separated cascades are evaluated on the same faces (e.g. DFF and SIFT); each is a
method named by its features (plus the file stem when two share features).

Outputs in ``DIR`` (atomically written):
  * ``summary.json``: ``dataset``, ``normaliser``, ``yaw_source``, ``box_protocol``, and for the
    first method at the top level ``nme_mean``, ``nme_by_yaw_bin`` (``"0-30"``, ``"30-60"``,
    ``"60-90"`` on |yaw| in degrees, [0, 30), [30, 60), [60, 90]), ``nme_yaw_bin_mean``,
    ``failure_rate_0.08``, ``failure_rate_0.10``, ``auc_0.08``, ``num_faces``; every method's
    figures under ``methods``; ``skipped`` (one-line messages of unreadable faces).
  * ``errors.jsonl``: one line per face and method: ``image``, ``method``, ``nme``, ``yaw_deg``.
  * ``ced.png``: cumulative error distribution of each method up to NME 0.10 (dashed line at 0.08).

Bad arguments or a missing cascade / checkpoint: one line on stderr, exit status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from absl import app
from absl import flags
from dff_jax import file_io

FLAGS = flags.FLAGS
DATASETS = ("synthetic", "300w", "aflw2000", "faces68")
DEFAULT_SYNTHETIC_FACES = 200
SYNTHETIC_SEED = 40_000


def define_flags() -> None:
  """Defines the command's flags (only when run as a program)."""
  flags.DEFINE_enum("dataset", None, list(DATASETS), "Evaluation set.")
  flags.DEFINE_string("data_dir", None, "Data folder (300w / aflw2000 / faces68).")
  flags.DEFINE_string("split", "val", "faces68: the split (<data_dir>/<split>.json).")
  flags.DEFINE_string("faces_json", None, "faces68: another json of faces in that layout.")
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
  flags.DEFINE_string("out_dir", None, "Output folder.")


def _method_names(specs) -> List[str]:
  """Method names: the features, plus the cascade's stem (or parent/stem, or a number) when two
  methods share features."""
  names = []
  for k, spec in enumerate(specs):
    same = [s for s in specs if s.features == spec.features]
    if len(same) == 1:
      names.append(spec.features)
    elif len({s.cascade_path.stem for s in same}) == len(same):
      names.append(f"{spec.features}:{spec.cascade_path.stem}")
    elif len({(s.cascade_path.parent.name, s.cascade_path.stem) for s in same}) == len(same):
      names.append(f"{spec.features}:{spec.cascade_path.parent.name}/{spec.cascade_path.stem}")
    else:
      names.append(f"{spec.features}:{k + 1}")
  return names


def evaluate(dataset: str, out_dir: str | Path, data_dir: Optional[str] = None,
             cascade: Optional[str] = None, features: Optional[str] = None,
             checkpoint: Optional[str] = None, face_model: Optional[str] = None,
             num_faces: Optional[int] = None, seed: int = SYNTHETIC_SEED,
             image_size: Optional[int] = None, batch_size: int = 8, progress: bool = True,
             report=None, render_face_model: Optional[str] = None, split: str = "val",
             faces_json: Optional[str] = None) -> Dict[str, Any]:
  """The command as a function; returns the summary written to ``out_dir/summary.json``.

  Raises:
    FileNotFoundError / ValueError: bad arguments, missing data, cascade or checkpoint.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import runner  # pylint: disable=g-import-not-at-top
  if report is None:
    def report(message):
      print(message, file=sys.stderr, flush=True)
  if dataset not in DATASETS:
    raise ValueError(f"--dataset must be one of {DATASETS}, got {dataset!r}")
  if dataset != "synthetic" and not data_dir:
    raise ValueError(f"--dataset={dataset} needs --data_dir=DIR")
  if dataset != "synthetic" and not Path(data_dir).is_dir():
    raise FileNotFoundError(f"--data_dir={data_dir} is not a directory")
  if num_faces is not None and num_faces < 1:
    raise ValueError(f"--num_faces must be >= 1, got {num_faces}")
  cascades = [c for c in (cascade or "").split(",") if c] or [None]
  specs = [runner.resolve_aligner(c, features, checkpoint, face_model) for c in cascades]
  names = _method_names(specs)

  if dataset == "synthetic":
    meta = specs[0].header.get("meta", {})
    if not image_size and "data" not in meta:
      image_size = int(specs[0].header["config"]["crop_size"])
    eval_set = runner.synthetic_set(num_faces or DEFAULT_SYNTHETIC_FACES, seed, image_size,
                                    render_face_model or specs[0].face_model,
                                    data=meta.get("data"), box_jitter=meta.get("box_jitter"))
  elif dataset == "aflw2000":
    eval_set = runner.aflw2000_set(data_dir, num_faces)
  elif dataset == "faces68":
    eval_set = runner.faces68_set(data_dir, split, faces_json, num_faces)
  else:
    eval_set = runner.folder_300w_set(data_dir, num_faces)
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)

  from dff_jax import image_io  # pylint: disable=g-import-not-at-top
  from dff_jax import metrics  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import draw  # pylint: disable=g-import-not-at-top
  from dff_jax import provenance  # pylint: disable=g-import-not-at-top

  methods: Dict[str, Dict[str, Any]] = {}
  records: List[Dict[str, Any]] = []
  curves = []
  skipped: Dict[str, str] = {}
  truth_by_name: Dict[str, Dict[str, Any]] = {}
  for spec, name in zip(specs, names):
    aligner = runner.load_aligner(spec)
    errors: Dict[str, float] = {}
    for outcome in runner.run_jobs(aligner, eval_set.jobs, batch_size, progress=progress,
                                   total=len(eval_set.jobs), keep_loaded=False):
      if outcome.error is not None:
        if outcome.job.name not in skipped:
          skipped[outcome.job.name] = outcome.error
          report(f"eval_alignment: skipped {outcome.error}")
        continue
      truth = outcome.loaded.truth
      truth_by_name[outcome.job.name] = truth
      predicted = runner.predicted_landmarks(outcome.face, eval_set.landmark_convention)
      errors[outcome.job.name] = float(metrics.nme(
          predicted.astype(np.float64),
          np.asarray(truth["landmarks_px"], np.float64), eval_set.normaliser))
    methods[name] = dict(errors=errors, aligner=aligner)

  # Faces every method aligned (a face one method could not read is skipped for all).
  common = [job.name for job in eval_set.jobs
            if all(job.name in m["errors"] for m in methods.values())]
  yaw = np.array([truth_by_name[n]["yaw_deg"] if truth_by_name[n]["yaw_deg"] is not None
                  else np.nan for n in common], np.float64)
  if dataset in ("300w", "faces68") and len(common):
    model = methods[names[0]]["aligner"].face_model
    yaw = runner.estimate_yaw_deg(model, np.stack([truth_by_name[n]["landmarks_px"]
                                                   for n in common]))
  summaries = {}
  for name in names:
    values = np.array([methods[name]["errors"][n] for n in common], np.float64)
    summaries[name] = runner.summarise_errors(values, yaw if len(common) else None,
                                              eval_set.normaliser)
    aligner = methods[name]["aligner"]
    summaries[name].update(features=aligner.spec.features,
                           cascade=str(aligner.spec.cascade_path),
                           descriptor_source=aligner.describer.source,
                           models=provenance.model_files({"cascade": aligner.spec.cascade_path,
                                                          "encoder": aligner.describer.source}))
    curves.append((name, values))
    for n, value, yaw_deg in zip(common, values, yaw):
      records.append(dict(image=n, method=name, nme=value, yaw_deg=yaw_deg))

  summary: Dict[str, Any] = dict(dataset=eval_set.name, data_dir=data_dir,
                                 yaw_source=eval_set.yaw_source,
                                 box_protocol=eval_set.box_protocol,
                                 landmark_convention=eval_set.landmark_convention,
                                 landmark_convention_description=runner.LANDMARK_CONVENTIONS[
                                     eval_set.landmark_convention][1])
  summary.update(summaries[names[0]])
  summary.update(method=names[0], methods=summaries, skipped=sorted(skipped.values()))
  if dataset == "synthetic":
    summary.update(seed=int(seed), render_face_model=render_face_model or specs[0].face_model,
                   pipeline=file_io.json_safe(eval_set.pipeline))
  file_io.write_json_atomic(out_dir / "summary.json", summary)
  lines = "".join(json.dumps(file_io.json_safe(r)) + "\n" for r in records)
  file_io.write_text_atomic(out_dir / "errors.jsonl", lines)
  title = f"{eval_set.name} NME {eval_set.normaliser} N={len(common)}"
  image_io.write_png_atomic(out_dir / "ced.png", draw.render_ced_plot(curves, title=title))
  return file_io.json_safe(summary)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.dataset or not FLAGS.out_dir:
    print("eval_alignment: error: --dataset and --out_dir are required", file=sys.stderr)
    sys.exit(2)
  try:
    summary = evaluate(FLAGS.dataset, FLAGS.out_dir, FLAGS.data_dir, FLAGS.cascade,
                       FLAGS.features, FLAGS.checkpoint, FLAGS.face_model, FLAGS.num_faces,
                       FLAGS.seed, FLAGS.image_size, FLAGS.batch_size,
                       render_face_model=FLAGS.render_face_model, split=FLAGS.split,
                       faces_json=FLAGS.faces_json)
  except (OSError, ValueError) as error:
    from dff_jax.file_io import error_line  # pylint: disable=g-import-not-at-top
    print(f"eval_alignment: error: {error_line(error)}", file=sys.stderr)
    sys.exit(2)
  keys = ("dataset", "method", "landmark_convention", "normaliser", "num_faces", "nme_mean", "nme_by_yaw_bin",
          "nme_yaw_bin_mean", "failure_rate_0.08", "failure_rate_0.10", "auc_0.08")
  print(json.dumps({k: summary.get(k) for k in keys}))


if __name__ == "__main__":
  define_flags()
  app.run(main)
