"""``experiments.saliency`` (dff_jax/evaluation/saliency.py): the gradient of a rendered face's
alignment error with respect to the image, on a cascade that ignores its image (planted: the
saliency is exactly zero), and shipped cascades asked for by name."""

import json

import numpy as np
import pytest

from conftest import write_random_bundle
from dff_jax.alignment import cascade
from dff_jax.alignment import io as cascade_io
from dff_jax.evaluation import saliency


def test_a_cascade_that_ignores_the_image_has_zero_saliency(tmp_path):
  """Zero regressors: the landmarks are the initial pose's whatever the pixels, so the error's
  gradient with respect to the image is exactly zero (map and chain-rule image term), so there is
  no share of it inside the face box to report (``None``, not 0/0 = NaN, which is no JSON), while
  the error itself and its yaw derivative (through the labels) are finite; the PNG and a strict
  JSON document are written."""
  bundle = write_random_bundle(tmp_path / "point", image_size=32, head="point")
  config = cascade.CascadeConfig(num_stages=1, crop_size=32)
  params = cascade.zero_params(1, 4, np.array([0.12, 0.0, 0.0, 0.0, 16.0, 16.0], np.float32))
  path = cascade_io.save_cascade(tmp_path / "cascade_dff.npz", params, config,
                                 dict(features="dff", descriptor_dim=4, face_model="default"))
  summary = saliency.run(tmp_path / "out", str(bundle), str(path), 30_000, 0, [0.5])
  assert summary["saliency_abs_grad_max"] == 0.0 and summary["saliency_abs_grad_sum"] == 0.0
  [step] = summary["d_error_d_yaw"]
  assert step["chain_rule_image_term_per_rad"] == 0.0
  assert np.isfinite(summary["error_nme_bbox"]) and np.isfinite(step["finite_difference_per_rad"])
  assert summary["saliency_fraction_in_face_box"] is None

  def refuse(constant):
    raise ValueError(f"not JSON: {constant}")
  document = json.loads((tmp_path / "out" / "saliency.json").read_text(), parse_constant=refuse)
  assert document["index"] == 0 and document["saliency_fraction_in_face_box"] is None
  assert (tmp_path / "out" / "saliency.png").stat().st_size > 0


def test_a_shipped_cascade_by_name(tmp_path, monkeypatch):
  """``--cascade=fast`` names the shipped file, as in ``align``; an unknown name is a missing
  file, said in one line."""
  seen = []

  def load(path):
    seen.append(path)
    raise FileNotFoundError(f"stop at {path}")
  monkeypatch.setattr(cascade_io, "load_cascade", load)
  with pytest.raises(FileNotFoundError):
    saliency.run(tmp_path / "out", "", "fast", 30_000, 0, [0.5])
  assert seen[0].name == "cascade_dff_fast.npz" and seen[0].is_file()
