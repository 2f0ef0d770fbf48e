"""Speed benchmarks, one command: one JSON object per line per measurement.

  python -m experiments.benchmark --what=encoder[,train_step,align,pipeline,stream,remat,aligner]

Every run first times a large float32 matmul (``what = "matmul_peak"``, ``--matmul_size``) to
give the machine's practical FLOP/s peak in the same conditions, then runs the requested
benchmarks (:mod:`dff_jax.benchmarking`, whose modules document every field). Each line has at
least ``what``, ``items_per_second`` and ``compile_s``, and names the device (``device_kind``,
``platform``, ``device_count``); the same code runs on CPU, GPU and TPU.

* ``encoder``: DFF encoder forward / forward+backward per ``--encoder_cases`` and
  ``--batch_sizes``; ``achieved_gflops`` (XLA cost analysis) and ``utilisation`` (its fraction
  of the matmul peak).
* ``train_step``: the jitted DFF train step of ``--train_config`` per ``--batch_sizes`` (pairs).
* ``align``: the cascade loop alone (faces/s; batch 64 among the defaults) and end to end.
* ``pipeline``: synthetic pairs/s in-process and with ``--grain_workers`` grain workers
  (``--results=FILE`` also writes them with the face model's sha256).
* ``stream``: ``experiments.align`` streaming ``--data_dir`` (a folder of photos; left out:
  rendered faces cached under the temp dir), ms per face, against the jitted call alone; dlib's
  predictor on the same boxes as a ratio when ``dlib`` is importable (``--dlib_predictor``;
  optional).
* ``remat``: compiled memory of differentiating the pipeline, without and with remat.
* ``aligner``: ``dff_jax.Aligner.align`` on ``--images`` with and without detection.

Flags left unset take each benchmark's default (given in their help). Note: timings on a shared
machine vary with other load; ``loadavg`` is recorded in each line.

Bad flags (an empty or unknown ``--what``, a count below 1, a ``--data_dir`` without photos, a
``--results`` that is a folder, ...) are refused before anything is timed: one line on stderr,
exit status 2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from absl import app
from absl import flags

from dff_jax import benchmarking
from dff_jax.benchmarking import pipeline as pipeline_benchmark
from experiments import cli

_WHAT = flags.DEFINE_list("what", ["encoder"], "Benchmarks to run (comma separated), from: "
                          f"{', '.join(benchmarking.BENCHMARKS)}.")
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", 2048, "Side of the square peak matmul.")
_RESULTS = flags.DEFINE_string("results", None, "Also write the records, the load average and the "
                               "sha256 of the models measured to this JSON file (pipeline alone: "
                               "its records by mode).")
# Options passed to the benchmarks that take them (None: the benchmark's own default).
flags.DEFINE_list("batch_sizes", None, "encoder, train_step: 1,32; align: 1,8,64.")
flags.DEFINE_integer("repeats", None, "Timed calls per measurement: 3 (aligner: 2).")
flags.DEFINE_list("encoder_cases", None, "encoder: keys of dff_jax.benchmarking.ENCODER_CASES "
                  "(cpu_gray,cpu_rgb,paper).")
flags.DEFINE_list("modes", None, "encoder: forward and/or train (both).")
flags.DEFINE_float("max_run_s", None, "encoder: skip calls estimated (FLOPs at 25% of the peak) "
                   "to take longer (150); long calls get fewer repeats.")
flags.DEFINE_float("max_temp_gb", None, "encoder: skip calls with more temporaries (8).")
flags.DEFINE_string("train_config", None, "train_step: config file (experiments/configs/"
                    "dff_cpu.py).")
flags.DEFINE_list("align_modes", None, "align: loop and/or end_to_end (both).")
flags.DEFINE_integer("num_stages", None, "align, remat: cascade stages K (5).")
flags.DEFINE_integer("crop_size", None, "align, remat: crop side in pixels (128).")
flags.DEFINE_integer("descriptor_dim", None, "align: descriptor size D of the loop (64).")
flags.DEFINE_integer("image_size", None, "Image side: align 256, pipeline 128, stream 224.")
flags.DEFINE_string("encoder_preset", None, "align: dff_jax.encoder.PRESETS key (cpu).")
flags.DEFINE_string("face_model", None, "align, pipeline: load_face_model spec (default); "
                    "stream: the cascade's.")
flags.DEFINE_integer("seed", None, "align: random inputs (0); stream: rendered faces (50000).")
flags.DEFINE_integer("num_pairs", None, "pipeline: pairs timed per measurement (60).")
flags.DEFINE_list("grain_workers", None, "pipeline: grain worker-process counts (1,2).")
flags.DEFINE_string("data_dir", None, "stream: a folder of photos (boxes.json or detected "
                    "boxes); left out: rendered faces, cached under the temp dir.")
flags.DEFINE_integer("num_images", None, "stream: images used (1000); aligner: (64).")
flags.DEFINE_integer("batch_size", None, "stream: faces per jitted call (64); aligner: (8).")
flags.DEFINE_string("cascade", None, "stream, aligner: cascade (default: the shipped one).")
flags.DEFINE_enum("features", None, ["dff", "sift"], "stream: descriptors (the cascade's).")
flags.DEFINE_string("checkpoint", None, "stream, aligner: DFF bundle (the cascade's encoder).")
flags.DEFINE_integer("workers", None, "stream: decoding threads (2).")
flags.DEFINE_integer("writers", None, "stream: writing threads (2).")
flags.DEFINE_integer("prefetch_batches", None, "stream: batches decoded ahead (2).")
flags.DEFINE_list("overlays", None, "stream: end-to-end runs without / with overlays "
                  "(false,true).")
flags.DEFINE_list("processes", None, "stream: worker-process counts of the end-to-end runs "
                  "(align --processes; 1); encoder: also the forward pass in that many pinned "
                  "processes at once (counts > 1).")
flags.DEFINE_string("dlib_predictor", None, "stream: dlib's 68-landmark model file, timed when "
                    "dlib is importable (optional).")
flags.DEFINE_integer("remat_batch_size", None, "remat: faces per call (8).")
flags.DEFINE_integer("remat_repeats", None, "remat: timed calls per measurement (2).")
flags.DEFINE_string("images", None, "aligner: image folder, glob or list.")
flags.DEFINE_enum("field", None, ["dense", "point"], "loop_profile: descriptor fields read by "
                  "the loop (dense).")
flags.DEFINE_integer("fit_modes", None, "loop_profile: directions the shape fit solves for "
                     "(all identity and expression coefficients).")
flags.DEFINE_boolean("mirror", None, "stream: the aligner with test-time mirroring (align "
                     "--mirror; default off).")
flags.DEFINE_enum("matmul_dtype", None, ["float32", "bfloat16"], "stream, loop_profile: operand "
                  "dtype of the DFF encoder's matrix products and the point head's (align "
                  "--matmul_dtype; default: the encoder's own, float32).")

_OPTIONS = ("batch_sizes", "repeats", "encoder_cases", "modes", "max_run_s", "max_temp_gb",
            "train_config", "align_modes", "num_stages", "crop_size", "descriptor_dim",
            "image_size", "encoder_preset", "face_model", "seed", "num_pairs", "grain_workers",
            "data_dir", "num_images", "batch_size", "cascade", "features", "checkpoint",
            "workers", "writers", "prefetch_batches", "overlays", "dlib_predictor",
            "remat_batch_size", "remat_repeats", "images", "field", "mirror", "processes",
            "fit_modes", "matmul_dtype")
_BOOLEANS = {"true": True, "false": False, "1": True, "0": False}


def _options():
  """The benchmark options given on the command line, parsed (``None``: not given).

  Raises:
    ValueError: a list of counts with a value that is not a whole number, or ``--overlays``
      with a value other than true / false (the message names the flag).
  """
  options = {name: flags.FLAGS[name].value for name in _OPTIONS}
  for name in ("batch_sizes", "grain_workers", "processes"):
    if options[name] is not None:
      try:
        options[name] = [int(v) for v in options[name]]
      except ValueError:
        raise ValueError(f"--{name}={','.join(options[name])}: give whole numbers >= 1, "
                         "comma-separated") from None
  if options["overlays"] is not None:
    try:
      options["overlays"] = [_BOOLEANS[v.strip().lower()] for v in options["overlays"]]
    except KeyError:
      raise ValueError(f"--overlays={','.join(options['overlays'])}: use true and/or "
                       "false") from None
  return options


def check_results_path(path: str) -> None:
  """``--results``, checked before anything runs: a file path (not a folder) whose nearest
  existing parent is a folder this process may write in.

  Raises:
    ValueError: a one-line message naming the flag.
  """
  target = Path(path)
  if target.is_dir():
    raise ValueError(f"--results={path} is a directory; give a JSON file path "
                     f"(e.g. {target / 'benchmark.json'})")
  parent = target.parent
  while not parent.exists() and parent != parent.parent:
    parent = parent.parent
  if not parent.is_dir():
    raise ValueError(f"--results={path}: {parent} is not a directory; give a JSON file path in "
                     "a folder")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ValueError(f"--results={path}: the folder {parent} is not writable; give a JSON file "
                     "path you may write")


def main(argv):
  cli.refuse_arguments(argv)
  # Every flag is checked before the matmul peak and before any benchmark loads or compiles.
  try:
    options = _options()
    benchmarking.check_options(_WHAT.value, options, _MATMUL_SIZE.value, flags.FLAGS.repeats)
    if _RESULTS.value is not None:
      if not _RESULTS.value.strip():
        raise ValueError("--results is empty; give a JSON file path or leave it out")
      check_results_path(_RESULTS.value)
  except (OSError, ValueError) as error:
    cli.fail("benchmark", str(error))
  loadavg_before, records = os.getloadavg(), []
  try:
    for record in benchmarking.run_benchmarks(_WHAT.value, options, _MATMUL_SIZE.value,
                                              flags.FLAGS.repeats, check=False):
      print(json.dumps(record), flush=True)
      records.append(record)
  except (OSError, ValueError) as error:
    cli.fail("benchmark", str(error))
  try:
    if _RESULTS.value and _WHAT.value == ["pipeline"]:
      pipeline_benchmark.write_results(_RESULTS.value, records,
                                       flags.FLAGS.face_model or "default", loadavg_before)
    elif _RESULTS.value:
      benchmarking.write_results(_RESULTS.value, records, loadavg_before,
                                 cascade=flags.FLAGS.cascade, checkpoint=flags.FLAGS.checkpoint)
  except OSError as error:
    from dff_jax.file_io import error_line  # pylint: disable=g-import-not-at-top
    cli.fail("benchmark", f"--results={_RESULTS.value}: not written: {error_line(error)}")


if __name__ == "__main__":
  app.run(main)
