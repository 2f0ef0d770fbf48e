r"""Builds the embedded default face model ``dff_jax/assets/face_model_ict.npz`` from ICT.

Command (from the repository root, needs ../shared/face_models/ict/ict_face_light.npz)::

  python -m experiments.build_default_face_model

What it does (deterministic; re-running gives the same file):
  1. ``load_face_model("ict")``: cm -> mm, 53 ARKit blendshapes with prior std 0.3, contour
     candidates and the 3D-convention jaw on ICT's jawline (``dff_jax.face_model.contour``) and
     the per-region albedo model (``dff_jax.face_model.albedo``, seed 0).
  2. Keeps the identity modes with the largest energy, ``--num_identity`` of them (60 by default:
     99 % of the identity variance of the 100 ICT modes), ordered by decreasing energy; they are
     already scaled so coefficients are ~N(0, 1).
  3. Writes our npz layout with float16 bases (``save_face_model(..., compact=True)``) and copies
     ICT-FaceKit's MIT licence next to it (``LICENSE-ICT-FaceKit.txt``).

Expected output: an asset of about 7 MB (limit 8 MB), 16434 vertices, 60 identity modes,
53 expression modes, 10 albedo modes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from absl import app
from absl import flags
from experiments import cli

from dff_jax.face_model import loaders

_SOURCE = flags.DEFINE_string("source", str(loaders.SHORTHANDS["ict"]), "ICT Face Model Light npz.")
_OUTPUT = flags.DEFINE_string("output", str(loaders.DEFAULT_ASSET), "Output npz.")
_NUM_IDENTITY = flags.DEFINE_integer("num_identity", 60, "Identity modes kept.")
_MAX_MB = flags.DEFINE_float("max_mb", 8.0, "Fail if the asset is larger (MB, 1e6 bytes).")


build_default_model = loaders.build_default_model  # the library function (also the recipe's)


def main(argv):
  cli.refuse_arguments(argv)
  model, energy, keep = build_default_model(_SOURCE.value, _NUM_IDENTITY.value)
  output = Path(_OUTPUT.value)
  loaders.save_face_model(model, output, compact=True)
  licence = Path(_SOURCE.value).with_name("LICENSE")
  shutil.copyfile(licence, output.with_name("LICENSE-ICT-FaceKit.txt"))
  size_mb = output.stat().st_size / 1e6
  print(f"wrote {output}: {size_mb:.2f} MB, {model.num_vertices} vertices, "
        f"{model.num_identity} identity modes ({energy[keep].sum() / energy.sum():.1%} of the "
        f"identity variance), {model.num_expression} expression modes, {model.num_albedo} albedo "
        f"modes")
  if size_mb > _MAX_MB.value:
    raise SystemExit(f"asset is {size_mb:.2f} MB > {_MAX_MB.value} MB: lower --num_identity")


if __name__ == "__main__":
  app.run(main)
