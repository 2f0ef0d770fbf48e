"""Cross-person matching on annotated photos (dff_jax/evaluation/real_matching.py,
``eval_matching --dataset=faces68``) on planted descriptor maps: each inner landmark carries its
own one-hot descriptor, so the matched pixel and hence every error is known in advance."""

import numpy as np
import pytest

from dff_jax.evaluation import real_matching

SIZE, DIM, BACKGROUND = 40, 64, 63


def _landmarks(shift):
  """``[68, 2]`` pixel centres on a 9-wide grid of 3-px spacing, moved by ``shift`` (x, y)."""
  k = np.arange(68)
  return np.stack([5.5 + 3 * (k % 9) + shift[0], 5.5 + 3 * (k // 9) + shift[1]], -1)


def _planted_map(landmarks, displacement=(0, 0)):
  """A ``[S, S, D]`` map: the background vector everywhere, inner landmark ``k`` (17-67)'s own
  one-hot ``e_{k-17}`` at the pixel ``displacement`` away from its annotated point."""
  maps = np.zeros((SIZE, SIZE, DIM), np.float32)
  maps[..., BACKGROUND] = 1.0
  for k in range(17, 68):
    x, y = (landmarks[k] - 0.5 + np.asarray(displacement)).astype(int)
    maps[y, x] = 0.0
    maps[y, x, k - 17] = 1.0
  return maps


def test_planted_one_hot_maps_give_the_planted_errors():
  """Faces 0 and 2 carry their one-hots on their landmarks, face 1 three pixels right and four
  down of its own: any face's descriptors find face 0's and face 2's landmarks exactly (error 0)
  and face 1's 5 px off, i.e. 5 / its outer-eye-corner distance."""
  landmarks = np.stack([_landmarks((0, 0)), _landmarks((2, 1)), _landmarks((4, 3))])
  maps = np.stack([_planted_map(landmarks[0]), _planted_map(landmarks[1], (3, 4)),
                   _planted_map(landmarks[2])])
  errors = real_matching.cross_person_errors(maps, landmarks, chunk_size=64)
  eyes = np.linalg.norm(landmarks[1, 36] - landmarks[1, 45])
  assert np.isnan(np.diag(errors)).all()
  assert errors[0, 2] == pytest.approx(0.0, abs=1e-6)
  assert errors[2, 0] == pytest.approx(0.0, abs=1e-6)
  assert errors[0, 1] == pytest.approx(5.0 / eyes, rel=1e-5)
  assert errors[2, 1] == pytest.approx(5.0 / eyes, rel=1e-5)


def test_position_guess_is_the_shift_between_faces():
  """Two faces whose landmarks differ by a shift of (6, 8) px: the "same crop position" guess
  misses by 10 px, over the other face's eye-corner distance, both ways."""
  landmarks = np.stack([_landmarks((0, 0)), _landmarks((6, 8))])
  errors = real_matching.position_guess_errors(landmarks)
  eyes = np.linalg.norm(landmarks[:, 36] - landmarks[:, 45], axis=-1)
  assert errors[0, 1] == pytest.approx(10.0 / eyes[1])
  assert errors[1, 0] == pytest.approx(10.0 / eyes[0])
  assert np.isnan(np.diag(errors)).all()


def test_summary_of_planted_errors():
  errors = np.array([[np.nan, 0.05, 0.15], [0.25, np.nan, 0.05], [0.15, 0.35, np.nan]])
  summary = real_matching.summarise(errors)
  assert summary["num_pairs"] == 6
  assert summary["mean"] == pytest.approx(1.0 / 6.0)
  assert summary["median"] == pytest.approx(0.15)
  assert summary["fraction_below_0_1"] == pytest.approx(2 / 6)
  assert summary["fraction_below_0_2"] == pytest.approx(4 / 6)


def test_faces68_entries_refuses_what_cannot_make_pairs(tmp_path):
  with pytest.raises(ValueError, match="--num_faces must be >= 2"):
    real_matching.faces68_entries(str(tmp_path), "val", num_faces=1)
  with pytest.raises(FileNotFoundError, match="no such folder"):
    real_matching.faces68_entries(str(tmp_path / "missing"), "val")
