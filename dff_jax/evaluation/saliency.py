r"""The saliency experiment of ``python -m experiments.saliency`` (:func:`run`).

Saliency of the final landmark error, and its derivative with respect to the render's yaw.

  python -m experiments.saliency --out_dir=/tmp/saliency \
      [--checkpoint=DIR] [--cascade=FILE] [--index=0] [--seed=30000] [--yaw_step_deg=0.5]

One synthetic face is rendered by the data pipeline (view ``index % 2`` of pair ``index // 2``
of pipeline seed ``--seed``, 192 px as in ``experiments/configs/align_cpu.py`` but without
photometric augmentation and occluders), aligned by the
encoder + cascade (:func:`dff_jax.training.finetune.pipeline_loss`: crop, descriptors,
``lax.scan`` cascade, visibility-aware bbox NME against the rendered ground truth), and:

1. **Saliency map** (exact, autodiff): ``g = d err / d image`` ``[H, W, 3]``; ``DIR/saliency.png``
   shows ``[image | |g| heat map over the grey image]`` with the true (red) and predicted
   (green) landmarks.
2. **Derivative with respect to yaw.** The renderer is NumPy (rasterisation is not
   differentiable), so ``d err / d yaw`` is computed by the chain rule

     ``d err / d yaw = <d err / d image, d image / d yaw> + <d err / d truth, d truth / d yaw>``

   where the two ``d err / d ...`` factors are exact (``jax.jvp``) and ``d image / d yaw`` and
   ``d truth / d yaw`` (the image and the true landmarks) are **central finite differences of
   re-renders** at ``yaw +- h`` (``--yaw_step_deg``). Only the yaw of the view changes: identity,
   expression, lighting, background, noise and the face box (from the unperturbed render) stay
   fixed, and so does the visibility mask used in the loss. The check is a plain central
   difference of the error over the same re-renders, ``(err(yaw + h) - err(yaw - h)) / 2h``.

Note: both numbers share the finite-difference part. They differ by the second-order behaviour
of ``err`` along the image change (the rasterised image is a non-smooth function of yaw at the
pixel level: silhouette and occlusion edges jump between pixels; the cascade has kinks), so
agreement to within a few tens of percent is what to expect at ``h`` ~ 0.5 degrees, not to many
digits; ``--yaw_step_deg`` several values show how the estimates move with ``h``.

Writes ``DIR/saliency.png`` and ``DIR/saliency.json`` (all numbers; derivatives per radian and
per degree) and prints the JSON.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Dict

import numpy as np

# align_cpu's faces without the photometric augmentation and occluders: a clean render, so that
# a small yaw change moves the face, not noise / jitter quantised to uint8.
DATA = dict(image_size=192, num_views=2, num_correspondences=16, face_size_range=(0.18, 0.27),
            colour_jitter=0.0, blur_probability=0.0, noise_std=0.0, occluder_probability=0.0)
JITTER = dict(scale=0.1, shift=0.06, aspect=0.1)


@contextlib.contextmanager
def yaw_offset(offset_rad: float):
  """Within the context, every rendered view's yaw is changed by ``offset_rad`` (rotation about
  the model origin; scale and translation unchanged); every random draw stays the same."""
  from data_pipeline import params as params_lib  # pylint: disable=g-import-not-at-top
  from dff_jax import geometry  # pylint: disable=g-import-not-at-top
  original = params_lib.sample_view_parameters

  def patched(*args, **kwargs):
    view = dict(original(*args, **kwargs))
    view["yaw_rad"] = np.float64(view["yaw_rad"] + offset_rad)
    view["rotation"] = geometry.euler_to_matrix(view["pitch_rad"], view["yaw_rad"],
                                                view["roll_rad"])
    return view

  params_lib.sample_view_parameters = patched
  try:
    yield
  finally:
    params_lib.sample_view_parameters = original


def render_face(seed: int, index: int, offset_rad: float = 0.0) -> Dict[str, np.ndarray]:
  """Image ``[H, W, 3]`` uint8, ``landmarks_px [68, 2]``, ``landmarks_visible [68]``, ``yaw_rad``,
  ``pose [6]`` (scale, pitch, yaw, roll, tx, ty; image pixels) and the detector-like ``box [4]``
  of face ``index`` (as :class:`data_pipeline.faces.FaceSource`)
  with its yaw changed by ``offset_rad``."""
  from data_pipeline import faces as faces_lib  # pylint: disable=g-import-not-at-top
  from data_pipeline import pairs  # pylint: disable=g-import-not-at-top
  from data_pipeline.config import pipeline_config_from_dict  # pylint: disable=g-import-not-at-top
  config = pipeline_config_from_dict(dict(DATA), seed=seed)
  view = index % config.num_views
  with yaw_offset(offset_rad):
    sample = pairs.generate_sample(config, index // config.num_views)
  landmarks = sample["landmarks_px"][view].astype(np.float32)
  rng = np.random.default_rng((config.seed, index, 7))
  box = faces_lib.jitter_box(rng, faces_lib.landmark_box(landmarks), faces_lib.BoxJitter(**JITTER))
  return dict(image=sample["images"][view], landmarks_px=landmarks,
              landmarks_visible=sample["landmarks_visible"][view],
              yaw_rad=float(sample["yaw_rad"][view]), box=box,
              pose=np.concatenate([[sample[key][view] for key in faces_lib.POSE_KEYS],
                                   sample["translation_px"][view]]).astype(np.float32))


def heat_overlay(image: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
  """``[H, W, 3]`` uint8: the grey image darkened, with ``magnitude [H, W]`` (scaled to its 99.5th
  percentile) as a black-red-yellow-white heat map added on top."""
  grey = image.astype(np.float32).mean(-1, keepdims=True) / 255.0
  scale = max(float(np.percentile(magnitude, 99.5)), 1e-20)
  t = np.clip(magnitude / scale, 0.0, 1.0)[..., None]
  heat = np.concatenate([np.clip(3 * t, 0, 1), np.clip(3 * t - 1, 0, 1), np.clip(3 * t - 2, 0, 1)],
                        axis=-1)
  out = np.clip(0.35 * grey + heat, 0.0, 1.0)
  return (out * 255 + 0.5).astype(np.uint8)


def run(out_dir: str | Path, checkpoint: str, cascade_path: str, seed: int, index: int,
        yaw_steps_deg) -> Dict[str, Any]:
  """Computes and writes the saliency example (see the module docstring); returns the JSON."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dff_jax import file_io, image_io  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import cascade  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import draw  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import features  # pylint: disable=g-import-not-at-top
  from dff_jax.training import finetune  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import io as cascade_io  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import runner  # pylint: disable=g-import-not-at-top
  from dff_jax.face_model import load_face_model  # pylint: disable=g-import-not-at-top

  cascade_path = runner.named_cascade_path(cascade_path)  # "default", "fast", ... or a file
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  params, config, meta = cascade_io.load_cascade(cascade_path)
  describer = features.describer_for_cascade(cascade_path, meta, checkpoint or None)
  if describer.descriptor_dim != params.descriptor_dim:
    raise ValueError(f"cascade {cascade_path} expects {params.descriptor_dim}-d descriptors, the "
                     f"{describer.kind} describer {describer.source} gives "
                     f"{describer.descriptor_dim}")
  alignment_model = cascade.alignment_model_for(
      load_face_model(meta.get("face_model", "default")), meta)
  trained, fixed = finetune.split_cascade(params)
  model_params = {"encoder": describer.params if describer.params is not None else {},
                  "cascade": trained}
  pipeline = finetune.Pipeline(apply=describer.apply, config=config, remat=False)
  base = render_face(seed, index)
  box = jnp.asarray(base["box"])[None]
  visible = jnp.asarray(base["landmarks_visible"])[None]
  pose = jnp.asarray(base["pose"])[None]

  @jax.jit
  def error(image, truth):
    """Final bbox NME of one face: image ``[H, W, 3]`` float32, truth ``[68, 2]``."""
    # The render's labels in the cascade's landmark convention (its landmark offsets).
    loss, aux = finetune.pipeline_loss(pipeline, model_params, fixed, alignment_model,
                                       image[None], box, truth[None], visible, pose=pose,
                                       model_landmarks=jnp.ones((1,), bool))
    return loss, aux["landmarks_px"][0]

  image0 = jnp.asarray(base["image"], jnp.float32)
  truth0 = jnp.asarray(base["landmarks_px"])
  (err0, predicted), grad_image = jax.value_and_grad(error, has_aux=True)(image0, truth0)
  grad_image = np.asarray(grad_image)
  magnitude = np.abs(grad_image).sum(-1)

  # The picture: [image | heat map], landmarks drawn, upscaled x2.
  left = np.array(base["image"])
  right = heat_overlay(base["image"], magnitude)
  for panel in (left, right):
    draw.draw_discs(panel, base["landmarks_px"], 1.2, (255, 60, 60))
    draw.draw_discs(panel, np.asarray(predicted), 1.2, (60, 255, 60))
  canvas = np.concatenate([left, np.full((left.shape[0], 4, 3), 255, np.uint8), right], axis=1)
  canvas = np.repeat(np.repeat(canvas, 2, axis=0), 2, axis=1)
  png = image_io.write_png_atomic(out_dir / "saliency.png", canvas)

  error_only = jax.jit(lambda image, truth: error(image, truth)[0])
  results = []
  for step_deg in yaw_steps_deg:
    h = float(np.radians(step_deg))
    plus, minus = render_face(seed, index, +h), render_face(seed, index, -h)
    d_image = (plus["image"].astype(np.float32) - minus["image"].astype(np.float32)) / (2 * h)
    d_truth = (plus["landmarks_px"] - minus["landmarks_px"]) / (2 * h)
    _, via_image = jax.jvp(lambda image: error_only(image, truth0), (image0,),
                           (jnp.asarray(d_image),))
    _, via_truth = jax.jvp(lambda truth: error_only(image0, truth), (truth0,),
                           (jnp.asarray(d_truth),))
    err_plus = float(error_only(jnp.asarray(plus["image"], jnp.float32),
                                jnp.asarray(plus["landmarks_px"])))
    err_minus = float(error_only(jnp.asarray(minus["image"], jnp.float32),
                                 jnp.asarray(minus["landmarks_px"])))
    chain = float(via_image) + float(via_truth)
    plain = (err_plus - err_minus) / (2 * h)
    results.append({
        "yaw_step_deg": float(step_deg),
        "chain_rule_per_rad": chain, "chain_rule_per_deg": chain * np.pi / 180,
        "chain_rule_image_term_per_rad": float(via_image),
        "chain_rule_truth_term_per_rad": float(via_truth),
        "finite_difference_per_rad": plain, "finite_difference_per_deg": plain * np.pi / 180,
        "error_at_plus": err_plus, "error_at_minus": err_minus,
        "relative_difference": abs(chain - plain) / max(abs(plain), 1e-12),
        "changed_pixels": int(np.count_nonzero(plus["image"] != minus["image"])),
    })
  total = float(magnitude.sum())
  in_box = float(magnitude[int(max(base["box"][1], 0)):int(base["box"][3]),
                           int(max(base["box"][0], 0)):int(base["box"][2])].sum())
  summary = {
      "features": describer.kind, "descriptor_source": describer.source,
      "cascade": str(cascade_path), "seed": seed, "index": index,
      "yaw_deg": float(np.degrees(base["yaw_rad"])), "error_nme_bbox": float(err0),
      "saliency_png": str(png),
      "saliency_abs_grad_max": float(magnitude.max()),
      "saliency_abs_grad_sum": total,
      # None when the error does not depend on the image at all (no saliency to place).
      "saliency_fraction_in_face_box": in_box / total if total > 0 else None,
      "d_error_d_yaw": results,
  }
  file_io.write_json_atomic(out_dir / "saliency.json", summary)
  return summary
