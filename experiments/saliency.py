r"""Saliency of the final landmark error, and its derivative with respect to the render's yaw.

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

import json
import sys

from absl import app
from absl import flags

from dff_jax.evaluation import saliency

_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder (created).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "", "DFF bundle / workdir (default: the encoder the cascade names).")
_CASCADE = flags.DEFINE_string("cascade", "dff_jax/assets/cascade_dff.npz",
                               "Cascade .npz (its features decide DFF or SIFT).")
_INDEX = flags.DEFINE_integer("index", 0, "Face index in the pipeline.")
_SEED = flags.DEFINE_integer("seed", 30_000, "Pipeline seed (30000: the cascade's eval faces).")
_YAW_STEPS = flags.DEFINE_list("yaw_step_deg", ["0.25", "0.5", "1.0"],
                               "Finite-difference steps h (degrees), each reported.")
flags.mark_flags_as_required(["out_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    summary = saliency.run(_OUT_DIR.value, _CHECKPOINT.value, _CASCADE.value, _SEED.value, _INDEX.value,
                  [float(s) for s in _YAW_STEPS.value])
  except (FileNotFoundError, ValueError) as error:
    print(f"saliency: error: {error}", file=sys.stderr)
    sys.exit(1)
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  app.run(main)
