r"""Dense matching accuracy of descriptors on held-out synthetic view pairs: the pair pipeline
settings, the pair describers (DFF, OpenCV SIFT, dense SIFT, raw patches), the per-pair errors,
the targets and the PCK figure.

:func:`eval_matching` is ``python -m experiments.eval_matching`` (``--dataset=synthetic``) as a
function; the protocol, the methods and the outputs are described in that command's docstring.
Real-photo matching (``--dataset=faces68``) is :mod:`dff_jax.evaluation.real_matching`.
Importing this module does not import JAX.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from dff_jax import descriptor_maps
from dff_jax import file_io

METHODS = ("dff", "sift", "dense_sift", "patch")
DEFAULT_SEED = 50_000
DEFAULT_IMAGE_SIZE = 128
DEFAULT_SIFT_SIZE_PX = 4.0
CURVE_THRESHOLDS_PX = np.arange(0.0, 16.0001, 0.25)
METHOD_COLOURS = {"dff": (220, 40, 40), "sift": (40, 90, 220), "dense_sift": (40, 170, 70),
                  "patch": (150, 150, 150)}
OPENCV_HINT = ("install it with `pip install opencv-python-headless==5.0.0.93` (evaluation only), "
               "or leave sift out of --methods")


def import_cv2():
  """``cv2``, or a one-line ``ValueError`` saying how to get it."""
  try:
    import cv2  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(f"--methods=sift needs OpenCV (cv2) and it is not installed: "
                     f"{OPENCV_HINT}") from None
  return cv2


def parse_list(text: str, allowed: Optional[Sequence[str]], flag: str) -> list:
  items = [t.strip() for t in str(text or "").split(",") if t.strip()]
  if not items:
    raise ValueError(f"--{flag} is empty")
  if allowed is not None:
    bad = [t for t in items if t not in allowed]
    if bad:
      raise ValueError(f"--{flag}: unknown {bad}; use a comma-separated subset of {list(allowed)}")
  return items


def check_settings(num_pairs: int = 1, image_size: Optional[int] = None,
                   num_correspondences: Optional[int] = None,
                   sift_size_px: float = DEFAULT_SIFT_SIZE_PX, patch_size: int = 9) -> None:
  """The synthetic evaluation's settings, checked before anything is loaded or rendered.

  ``None`` for ``image_size`` / ``num_correspondences`` means the default (the checkpoint's);
  a given value must be a whole number >= 1.

  Raises:
    ValueError: a one-line message naming the flag and what to give.
  """
  if int(num_pairs) < 1:
    raise ValueError(f"--num_pairs must be >= 1, got {num_pairs}")
  if image_size is not None and int(image_size) < 1:
    raise ValueError(f"--image_size must be >= 1 (render size in pixels), got {image_size}; "
                     "leave it out for the encoder's training size")
  if num_correspondences is not None and int(num_correspondences) < 1:
    raise ValueError(f"--num_correspondences must be >= 1, got {num_correspondences}; leave it "
                     "out for the training config's")
  if not (np.isfinite(float(sift_size_px)) and float(sift_size_px) > 0):
    raise ValueError(f"--sift_size must be a positive number of pixels, got {sift_size_px} "
                     f"(default {DEFAULT_SIFT_SIZE_PX:g})")
  if int(patch_size) < 1 or int(patch_size) % 2 == 0:
    raise ValueError(f"--patch_size must be a positive odd number, got {patch_size}")


def parse_sift_cells(text: str) -> list:
  """``--sift_cells`` (comma-separated dense SIFT cell sizes) as ints, each even and >= 2
  (:func:`dff_jax.sift.dense_sift`).

  Raises:
    ValueError: empty, not a whole number, odd or below 2 (one line naming the flag).
  """
  cells = []
  for item in parse_list(text, None, "sift_cells"):
    try:
      cell = int(item)
    except ValueError:
      raise ValueError(f"--sift_cells: {item!r} is not a whole number of pixels; give even "
                       "cell sizes >= 2, e.g. 4,8,12,16") from None
    cells.append(check_sift_cell(cell))
  return cells


def check_sift_cell(cell: int) -> int:
  """A dense SIFT cell size (px) as :func:`dff_jax.sift.dense_sift` needs it: even and >= 2.

  Raises:
    ValueError: one line naming ``--sift_cells``.
  """
  if int(cell) != cell or cell < 2 or cell % 2:
    raise ValueError(f"--sift_cells: {cell} is not an even cell size >= 2 (pixels); give "
                     "e.g. 4,8,12,16")
  return int(cell)


def pipeline_config_for(face_model: str, seed: int, num_pairs: int, image_size: int,
                        num_correspondences: int, base: Optional[dict] = None):
  """The held-out ``PipelineConfig``: ``base`` (the training data config) with the seed, face
  model, size and correspondence count replaced."""
  from data_pipeline.config import pipeline_config_from_dict  # pylint: disable=g-import-not-at-top
  values = dict(base or {})
  values.update(seed=int(seed), num_examples=max(int(num_pairs), 1), face_model=str(face_model),
                image_size=int(image_size), num_correspondences=int(num_correspondences))
  return pipeline_config_from_dict(values)


# ----------------------------------------------------------------------------------------------
# Describing a pair: (images [2, H, W, 3] uint8, points_a [K, 2], mask_b [H, W]) ->
#   (query [K, D], target_map [H, W, D], query_ok [K] bool)
# ----------------------------------------------------------------------------------------------


def dense_pair_describer(dense_fn: Callable) -> Callable:
  """Wraps a dense ``[2, H, W, 3] float32 in [0, 255] -> [2, H, W, D]`` descriptor function."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dff_jax import matching  # pylint: disable=g-import-not-at-top

  @jax.jit
  def run(images, points_a):
    maps = dense_fn(images.astype(jnp.float32))
    query, inside = matching.sample_descriptors(maps[0], points_a)
    return query, maps[1], inside

  return lambda images, points_a, mask_b: run(images, points_a)


def opencv_sift_pair_describer(keypoint_size_px: float = DEFAULT_SIFT_SIZE_PX) -> Callable:
  """OpenCV SIFT, upright, one keypoint size, at view B's face pixels and view A's points.

  OpenCV puts pixel ``(i, j)``'s centre at ``(j, i)``; ours is ``(j + 0.5, i + 0.5)``, so
  keypoints are placed at our points minus 0.5. Descriptors are L2-normalised here (OpenCV's
  are scaled to ~512).
  """
  cv2 = import_cv2()
  sift = cv2.SIFT_create()

  def run(images, points_a, mask_b):
    images = np.asarray(images)
    grey = [cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2GRAY) for im in images]
    height, width = grey[1].shape
    rows, cols = np.nonzero(np.asarray(mask_b))
    # Angle 0 = upright (cv2.KeyPoint.convert would give angle -1, i.e. a 1-degree rotation).
    keypoints_b = [cv2.KeyPoint(float(j), float(i), float(keypoint_size_px), 0.0)
                   for i, j in zip(rows.tolist(), cols.tolist())]
    target = np.zeros((height, width, 128), np.float32)
    if len(keypoints_b):
      keypoints_b, descriptors_b = sift.compute(grey[1], keypoints_b)
      if descriptors_b is not None and len(keypoints_b):
        where = np.rint(cv2.KeyPoint.convert(keypoints_b)).astype(np.int64)
        ok = (where[:, 0] >= 0) & (where[:, 0] < width) & (where[:, 1] >= 0) & (where[:, 1] < height)
        target[where[ok, 1], where[ok, 0]] = descriptors_b[ok]
    points_a = np.asarray(points_a, np.float32)
    keypoints_a = [cv2.KeyPoint(float(x) - 0.5, float(y) - 0.5, float(keypoint_size_px), 0.0,
                                0.0, 0, k) for k, (x, y) in enumerate(points_a)]
    query = np.zeros((points_a.shape[0], 128), np.float32)
    ok_a = np.zeros(points_a.shape[0], bool)
    keypoints_a, descriptors_a = sift.compute(grey[0], keypoints_a)
    if descriptors_a is not None:
      ids = np.asarray([kp.class_id for kp in keypoints_a], np.int64)
      query[ids] = descriptors_a
      ok_a[ids] = True
    norms = np.linalg.norm(target, axis=-1, keepdims=True)
    target = target / np.maximum(norms, 1e-12)
    query = query / np.maximum(np.linalg.norm(query, axis=-1, keepdims=True), 1e-12)
    return query, target, ok_a

  return run


def make_pair_describers(methods: Sequence[str], model: Optional[descriptor_maps.DFFModel],
                         sift_size_px: float, patch_size: int) -> Dict[str, Callable]:
  from dff_jax import matching  # pylint: disable=g-import-not-at-top
  from dff_jax import sift  # pylint: disable=g-import-not-at-top
  describers = {}
  for method in methods:
    if method == "dff":
      describers[method] = dense_pair_describer(model.describe)
    elif method == "sift":
      describers[method] = opencv_sift_pair_describer(sift_size_px)
    elif method == "dense_sift":
      describers[method] = dense_pair_describer(lambda x: sift.dense_sift(x, cell_px=4))
    elif method == "patch":
      describers[method] = dense_pair_describer(
          lambda x: matching.patch_descriptors(x, patch_size))
  return describers


def method_details(methods: Sequence[str], model, sift_size_px: float, patch_size: int) -> dict:
  details = {}
  for method in methods:
    if method == "dff":
      details[method] = (f"DFF encoder {model.source} (D={model.descriptor_dim}, trained at "
                         f"{model.image_size} px)")
    elif method == "sift":
      cv2 = import_cv2()
      details[method] = (f"OpenCV {cv2.__version__} SIFT compute, upright, keypoint size "
                         f"{sift_size_px:g} px, at every face pixel of view B")
    elif method == "dense_sift":
      details[method] = "dff_jax.sift.dense_sift, 4 px cells (16 px window), upright"
    elif method == "patch":
      details[method] = f"{patch_size}x{patch_size} grey patches, zero-mean unit-norm"
  return details


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def evaluate_face_model(config, describers: Dict[str, Callable], num_pairs: int,
                        log: Callable[[str], None] = lambda s: None) -> dict:
  """Matching errors of every method on pairs ``0 .. num_pairs - 1`` of ``config``.

  Returns:
    ``{"errors": {method: [P, K] float32 px}, "valid": [P, K] bool, "yaw_difference_deg": [P],
    "face_pixels_b": [P] int (candidate pixels per pair)}``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from data_pipeline.pairs import PairSource  # pylint: disable=g-import-not-at-top
  from dff_jax import matching  # pylint: disable=g-import-not-at-top

  match = jax.jit(matching.match_descriptors)
  source = PairSource(config)
  k = config.num_correspondences
  errors = {m: np.full((num_pairs, k), np.inf, np.float32) for m in describers}
  valid = np.zeros((num_pairs, k), bool)
  yaw_difference = np.zeros(num_pairs, np.float32)
  face_pixels_b = np.zeros(num_pairs, np.int64)
  start = time.time()
  for p in range(num_pairs):
    sample = source[p]
    images, mask_b = sample["images"][:2], sample["mask"][1]
    points_a, points_b = sample["points_a_px"], sample["points_b_px"]
    yaw_difference[p] = np.degrees(abs(float(sample["yaw_rad"][0]) - float(sample["yaw_rad"][1])))
    valid[p] = sample["valid"] & bool(mask_b.any())
    face_pixels_b[p] = int(mask_b.sum())
    for method, describe in describers.items():
      query, target, ok = describe(images, points_a, mask_b)
      matched, _ = match(jnp.asarray(query), jnp.asarray(target), jnp.asarray(mask_b))
      error = np.linalg.norm(np.asarray(matched) - points_b, axis=-1)
      errors[method][p] = np.where(np.asarray(ok), error, np.inf)
    if (p + 1) % 10 == 0 or p + 1 == num_pairs:
      log(f"{config.face_model}: {p + 1}/{num_pairs} pairs, {time.time() - start:.0f} s")
  return dict(errors=errors, valid=valid, yaw_difference_deg=yaw_difference,
              face_pixels_b=face_pixels_b)


def targets_for(results: Dict[str, Dict[str, dict]]) -> dict:
  """The two figures we report (see the module docstring), from ``summary["results"]``."""
  key = "pck@4px"
  out = {}
  for face_model, by_method in results.items():
    entry = {}
    for method, summary in by_method.items():
      entry[f"{method}_{key}_yawdiff>=30"] = summary[">=30"][key]
    if "dff" in by_method and "sift" in by_method:
      dff, sift = by_method["dff"][">=30"][key], by_method["sift"][">=30"][key]
      ratio = dff / sift if sift > 0 else float("inf") if dff > 0 else float("nan")
      entry["dff_over_sift"] = float(ratio)
      entry["dff_at_least_2x_sift"] = bool(np.isfinite(dff) and ratio >= 2.0)
    out[face_model] = entry
  reference = next((m for m in ("default", "ict") if m in results), None)
  if reference and "sfm" in results and "dff" in results[reference] and "dff" in results["sfm"]:
    ref = results[reference]["dff"][">=30"][key]
    sfm = results["sfm"]["dff"][">=30"][key]
    relative = (sfm - ref) / ref if ref > 0 else float("nan")
    out["sfm_vs_" + reference] = dict(dff_relative_difference=float(relative),
                                      within_20_percent=bool(abs(relative) <= 0.2))
  return out


# ----------------------------------------------------------------------------------------------
# PCK curves (NumPy drawing, Pillow only for the text)
# ----------------------------------------------------------------------------------------------


def draw_curve_panel(curves: Sequence[tuple], title: str, size=(420, 260)) -> np.ndarray:
  """One plot: ``curves`` = [(label, (r, g, b), x [T], y [T] in [0, 1])], x in px (0-16).

  Returns:
    ``[H, W, 3]`` uint8 panel: white background, axes with ticks every 4 px / 0.25, grid lines,
    2-px curves, a legend and the title.
  """
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  from data_pipeline import draw  # pylint: disable=g-import-not-at-top
  width, height = size
  left, right, top, bottom = 40, 95, 22, 30  # the legend sits in the right margin
  canvas = np.full((height, width, 3), 255, np.uint8)
  x_max = float(CURVE_THRESHOLDS_PX[-1])

  def to_canvas(x, y):
    return (left + (np.asarray(x) / x_max) * (width - left - right),
            top + (1.0 - np.asarray(y)) * (height - top - bottom))

  for tick in np.arange(0.0, x_max + 1e-6, 4.0):
    (cx, _), (cy0, cy1) = to_canvas(tick, 0), (top, height - bottom)
    draw.draw_line(canvas, (cx, cy0), (cx, cy1), (225, 225, 225))
  for tick in np.arange(0.0, 1.0001, 0.25):
    _, cy = to_canvas(0, tick)
    draw.draw_line(canvas, (left, cy), (width - right, cy), (225, 225, 225))
  draw.draw_line(canvas, (left, height - bottom), (width - right, height - bottom), (0, 0, 0))
  draw.draw_line(canvas, (left, top), (left, height - bottom), (0, 0, 0))
  for _, colour, xs, ys in curves:
    ys = np.nan_to_num(np.asarray(ys, np.float64), nan=0.0)
    cx, cy = to_canvas(xs, ys)
    for n in range(len(cx) - 1):
      for d in (0.0, 0.7):
        draw.draw_line(canvas, (cx[n], cy[n] + d), (cx[n + 1], cy[n + 1] + d), colour)
  image = Image.fromarray(canvas)
  pen = ImageDraw.Draw(image)
  pen.text((left, 4), title, fill=(0, 0, 0))
  for tick in np.arange(0.0, x_max + 1e-6, 4.0):
    cx, _ = to_canvas(tick, 0)
    pen.text((cx - 4, height - bottom + 4), f"{tick:g}", fill=(0, 0, 0))
  pen.text((width // 2 - 40, height - 13), "threshold (px)", fill=(0, 0, 0))
  for tick in np.arange(0.0, 1.0001, 0.25):
    _, cy = to_canvas(0, tick)
    pen.text((6, cy - 6), f"{tick:.2f}", fill=(0, 0, 0))
  for n, (label, colour, _, _) in enumerate(curves):
    y = top + 14 * n
    pen.rectangle([width - right + 8, y + 3, width - right + 18, y + 9], fill=tuple(colour))
    pen.text((width - right + 22, y), label, fill=(0, 0, 0))
  return np.asarray(image)


def pck_figure(per_model: Dict[str, dict]) -> np.ndarray:
  """Rows of ``[all pairs | yaw difference >= 30]`` PCK-curve panels, one row per face model."""
  from data_pipeline import draw  # pylint: disable=g-import-not-at-top
  from dff_jax import matching  # pylint: disable=g-import-not-at-top
  panels = []
  for face_model, data in per_model.items():
    for name, low in (("all pairs", 0.0), ("yaw difference >= 30 deg", 30.0)):
      chosen = data["yaw_difference_deg"] >= low
      curves = []
      for method, errors in data["errors"].items():
        y = matching.pck_curve(errors[chosen], data["valid"][chosen], CURVE_THRESHOLDS_PX)
        curves.append((method, METHOD_COLOURS.get(method, (0, 0, 0)), CURVE_THRESHOLDS_PX, y))
      panels.append(draw_curve_panel(curves, f"{face_model}: PCK, {name} "
                                     f"({int(np.sum(chosen))} pairs)"))
  return draw.grid(panels, columns=2, pad=4)


def finite_or_none(value: Any) -> Any:
  """A JSON-ready copy of ``value``: NumPy scalars to Python, NaN / inf to None (valid JSON)."""
  if isinstance(value, dict):
    return {str(k): finite_or_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [finite_or_none(v) for v in value]
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not np.isfinite(value):
    return None
  return value


def eval_matching(out_dir: str | os.PathLike, num_pairs: int,
                  face_models: Sequence[str] = ("default",), methods: Sequence[str] = METHODS,
                  checkpoint: Optional[str] = None, seed: int = DEFAULT_SEED,
                  image_size: Optional[int] = None, num_correspondences: Optional[int] = None,
                  sift_size_px: float = DEFAULT_SIFT_SIZE_PX, patch_size: int = 9,
                  model: Optional[descriptor_maps.DFFModel] = None,
                  log: Callable[[str], None] = lambda s: None) -> dict:
  """``python -m experiments.eval_matching`` (synthetic pairs) as a function: runs the evaluation
  described in that command's docstring; writes and returns the summary."""
  from dff_jax import matching  # pylint: disable=g-import-not-at-top
  check_settings(num_pairs, image_size, num_correspondences, sift_size_px, patch_size)
  methods = list(methods)
  if "sift" in methods:
    import_cv2()
  base = None
  if "dff" in methods:
    if model is None:
      model = descriptor_maps.load_dff(checkpoint)
    base = dict(model.meta.get("experiment", {}).get("data", {})) or None
    image_size = image_size or model.image_size
  image_size = int(image_size or (base or {}).get("image_size", DEFAULT_IMAGE_SIZE))
  num_correspondences = int(num_correspondences or (base or {}).get("num_correspondences", 256))
  if base is not None and seed == int(base.get("seed", 0)):
    raise ValueError(f"--seed={seed} is the checkpoint's training data seed; use another "
                     f"(default {DEFAULT_SEED})")
  configs = {fm: pipeline_config_for(fm, seed, num_pairs, image_size, num_correspondences, base)
             for fm in face_models}
  describers = make_pair_describers(methods, model, sift_size_px, patch_size)
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  per_model, results = {}, {}
  start = time.time()
  for face_model, config in configs.items():
    data = evaluate_face_model(config, describers, num_pairs, log)
    per_model[face_model] = data
    results[face_model] = {
        m: matching.summarise_matches(e, data["valid"], data["yaw_difference_deg"])
        for m, e in data["errors"].items()}
    buffer = {f"errors_{m}": e for m, e in data["errors"].items()}
    path = out_dir / f"errors_{Path(face_model).stem}.npz"
    import io  # pylint: disable=g-import-not-at-top
    stream = io.BytesIO()
    np.savez_compressed(stream, valid=data["valid"],
                        yaw_difference_deg=data["yaw_difference_deg"],
                        face_pixels_b=data["face_pixels_b"], **buffer)
    file_io.write_bytes_atomic(path, stream.getvalue())
  summary = dict(
      num_pairs=int(num_pairs), seed=int(seed), image_size=image_size,
      num_correspondences=num_correspondences, face_models=list(face_models), methods=methods,
      method_details=method_details(methods, model, sift_size_px, patch_size),
      thresholds_px=list(matching.PCK_THRESHOLDS_PX),
      yaw_difference_bins_deg={name: [low, high] for name, low, high in
                               matching.YAW_DIFFERENCE_BINS_DEG + matching.AGGREGATE_BINS_DEG},
      checkpoint=None if model is None else model.source,
      pipeline={fm: c.to_dict() for fm, c in configs.items()},
      results=results, targets=targets_for(results),
      # Matching difficulty differs between face models (the SFM mesh covers the face only, the
      # default one also the head and neck): the candidate count and the PCK@4px of a random
      # pick among them (pi * 4^2 / face pixels) put the figures in context.
      candidates={fm: dict(mean_face_pixels_b=float(np.mean(d["face_pixels_b"])),
                           chance_pck_at_4px=float(np.mean(
                               np.minimum(1.0, np.pi * 16.0 / np.maximum(d["face_pixels_b"], 1)))))
                  for fm, d in per_model.items()},
      seconds=round(time.time() - start, 1))
  summary = finite_or_none(summary)
  file_io.write_json_atomic(out_dir / "summary.json", summary)
  descriptor_maps.write_png(out_dir / "pck_curves.png", pck_figure(per_model))
  return summary
