"""Pair generation: fields, determinism, exact correspondences, occlusion, config errors,
no JAX in the pipeline."""

import subprocess
import sys

import numpy as np
import pytest

from dff_jax.face_model import model as fm
from data_pipeline import pairs, params, rasterizer
from data_pipeline.config import PipelineConfig, pipeline_config_from_dict
from data_pipeline.pairs import PairSource, generate_sample, shard_indices
from data_pipeline.validate import arrays_identical, check_sample
from tests.test_rasterizer import cube_mesh

SMALL = dict(image_size=64, num_correspondences=32, max_yaw_deg=60.0)


@pytest.fixture(scope="module")
def sample():
  return PairSource(PipelineConfig(num_views=3, **SMALL))[7]


def test_fields_shapes_and_dtypes(sample):
  model = params.pipeline_face_model("default")
  v, h, k = 3, 64, 32
  expected = dict(
      images=((v, h, h, 3), np.uint8), vertex_ids=((v, h, h), np.int32),
      triangle_ids=((v, h, h), np.int32), barycentrics=((v, h, h, 3), np.float32),
      mask=((v, h, h), np.bool_), points_px=((v, k, 2), np.float32),
      points_visible=((v, k), np.bool_), points_a_px=((k, 2), np.float32),
      points_b_px=((k, 2), np.float32), valid=((k,), np.bool_),
      points_triangle_ids=((k,), np.int32), points_barycentrics=((k, 3), np.float32),
      landmarks_px=((v, 68, 2), np.float32), landmarks_visible=((v, 68), np.bool_),
      yaw_rad=((v,), np.float32), pitch_rad=((v,), np.float32), roll_rad=((v,), np.float32),
      scale=((v,), np.float32), translation_px=((v, 2), np.float32),
      shape_coefficients=((model.num_identity,), np.float32),
      expression_coefficients=((model.num_expression,), np.float32),
      albedo_coefficients=((model.num_albedo,), np.float32), index=((), np.int64))
  assert set(sample) == set(expected)
  for name, (shape, dtype) in expected.items():
    assert sample[name].shape == shape, name
    assert sample[name].dtype == dtype, name
  # Consistency between the maps.
  np.testing.assert_array_equal(sample["mask"], sample["triangle_ids"] >= 0)
  np.testing.assert_array_equal(sample["mask"], sample["vertex_ids"] >= 0)
  assert sample["vertex_ids"].max() < model.num_vertices
  np.testing.assert_allclose(sample["barycentrics"][sample["mask"]].sum(-1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(sample["valid"], sample["points_visible"][0]
                                & sample["points_visible"][1])
  np.testing.assert_array_equal(sample["points_b_px"], sample["points_px"][1])
  assert sample["valid"].sum() > 0 and sample["mask"].sum() > 200
  # Views differ in pose; correspondence points of view 0 lie on face pixels.
  assert len(set(sample["yaw_rad"].tolist())) == 3
  a = sample["points_a_px"][sample["valid"]].astype(int)
  assert sample["mask"][0][a[:, 1], a[:, 0]].mean() > 0.95


def test_determinism_and_independence():
  config = PipelineConfig(**SMALL)
  first, again = PairSource(config)[3], PairSource(config)[3]
  assert arrays_identical(first, again)
  assert arrays_identical(first, generate_sample(config, 3))
  other = PairSource(config)[4]
  assert not np.array_equal(first["images"], other["images"])
  reseeded = PairSource(config.replace(seed=1))[3]
  assert not np.array_equal(first["images"], reseeded["images"])


def test_correspondences_are_exact_and_unoccluded():
  config = PipelineConfig(**SMALL)
  model = params.pipeline_face_model("default")
  prepared = params.prepared_for(config)
  for i in range(3):
    s = generate_sample(config, i)
    result = check_sample(model, s, config.depth_tolerance_mm, prepared.model_triangles)
    assert result["max_reprojection_error_px"] <= 0.01
    assert result["occluded_matches"] == 0
    assert result["valid"] > 0


def test_validator_detects_occluded_matches():
  # Marking every candidate valid at a large yaw difference must expose occluded points.
  config = PipelineConfig(**dict(SMALL, max_yaw_deg=90.0))
  model = params.pipeline_face_model("default")
  prepared = params.prepared_for(config)
  total = 0
  for i in range(6):
    s = generate_sample(config, i)
    s["valid"] = s["points_triangle_ids"] >= 0
    total += check_sample(model, s, config.depth_tolerance_mm, prepared.model_triangles)["occluded_matches"]
  assert total > 0


def cube_face_model():
  v, tris = cube_mesh(half=40.0)
  n = v.shape[0]
  return fm.FaceModel(
      mean_vertices=v.astype(np.float32), identity_basis=np.zeros((1, n, 3), np.float32),
      expression_basis=np.zeros((0, n, 3), np.float32), expression_std=np.zeros(0, np.float32),
      triangles=tris.astype(np.int32), vertex_part=np.zeros(n, np.int32),
      landmark_vertex_ids=np.arange(68, dtype=np.int32) % n,
      landmark_3d_vertex_ids=np.arange(68, dtype=np.int32) % n,
      contour_candidates=(np.arange(17, dtype=np.int32) % n)[:, None],
      albedo_mean=np.full((n, 3), 0.5, np.float32), albedo_basis=np.zeros((0, n, 3), np.float32),
      name="cube")


def test_cube_model_pairs_are_exact():
  model = cube_face_model()
  prepared = params.prepare_model(model)
  config = PipelineConfig(image_size=48, num_correspondences=64, max_yaw_deg=80.0,
                          max_pitch_deg=40.0, face_size_range=(0.4, 0.5))
  for i in range(4):
    s = generate_sample(config, i, prepared)
    result = check_sample(model, s, config.depth_tolerance_mm, prepared.model_triangles)
    assert result["max_reprojection_error_px"] < 1e-3 and result["occluded_matches"] == 0
    # A cube shows at most 3 faces = 6 triangles per view.
    assert len(np.unique(s["triangle_ids"][0][s["mask"][0]])) <= 6


@pytest.mark.parametrize("bad, match", [
    (dict(image_size=0), "image_size"), (dict(image_size=16), r"\[32, 512\]"),
    (dict(image_size=600), r"\[32, 512\]"), (dict(num_views=1), "num_views"),
    (dict(num_correspondences=0), "num_correspondences"),
    (dict(face_model="no_such_model"), "unknown face_model"),
    (dict(max_yaw_deg=120.0), "max_yaw_deg"), (dict(lighting="neon"), "lighting"),
    (dict(face_size_range=(0.5, 0.2)), "face_size_range"),
])
def test_bad_configs_raise_clear_errors(bad, match):
  with pytest.raises(ValueError, match=match):
    PipelineConfig(**bad)


def test_config_from_dict_rejects_unknown_keys():
  with pytest.raises(ValueError, match="unknown pipeline config keys"):
    pipeline_config_from_dict({"image_sise": 64})
  assert pipeline_config_from_dict({"image_size": 64}, num_views=3).num_views == 3


def test_shard_indices_partition():
  parts = [shard_indices(10, p, 3) for p in range(3)]
  assert sorted(i for part in parts for i in part) == list(range(10))
  with pytest.raises(ValueError):
    shard_indices(10, 3, 3)
  source = PairSource(PipelineConfig(**SMALL), indices=parts[1])
  assert len(source) == len(parts[1])
  assert int(source[0]["index"]) == parts[1][0]
  with pytest.raises(IndexError):
    source[len(parts[1])]


def test_pipeline_modules_do_not_import_jax():
  code = ("import sys\n"
          "import data_pipeline.pairs, data_pipeline.shards, data_pipeline.validate\n"
          "import data_pipeline.rasterizer, data_pipeline.shading, data_pipeline.augment\n"
          "from data_pipeline.pairs import PairSource\n"
          "from data_pipeline.config import PipelineConfig\n"
          "PairSource(PipelineConfig(image_size=32, num_correspondences=4))[0]\n"
          "bad = [m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'tensorflow'))]\n"
          "assert not bad, bad\n")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_decimation_keeps_vertex_ids_orientation_and_protected_vertices():
  from data_pipeline.decimate import decimate
  n = 21
  y, x = np.mgrid[0:n, 0:n].astype(np.float64)
  vertices = np.stack([x.ravel(), y.ravel(), np.sin(x.ravel() / 3) * np.cos(y.ravel() / 4)], 1)
  ids = np.arange(n * n).reshape(n, n)
  a, b, c, d = ids[:-1, :-1].ravel(), ids[:-1, 1:].ravel(), ids[1:, 1:].ravel(), ids[1:, :-1].ravel()
  triangles = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])  # normals +z
  protected = np.array([ids[10, 10], ids[5, 7]])
  coarse = decimate(vertices, triangles, target_triangles=400, protected=protected)
  assert coarse.shape[0] <= 410 and coarse.dtype == np.int32
  kept = np.unique(coarse)
  assert set(protected.tolist()) <= set(kept.tolist())
  border = np.unique(np.concatenate([ids[0], ids[-1], ids[:, 0], ids[:, -1]]))
  assert set(border.tolist()) <= set(kept.tolist())  # mesh boundary is preserved
  p = vertices[coarse]
  normals = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
  assert (normals[:, 2] > 0).all()
  # The coarse mesh still covers the square: total projected area is unchanged.
  assert 0.5 * normals[:, 2].sum() == pytest.approx((n - 1) ** 2)


def test_default_render_mesh_is_decimated_over_model_vertex_ids():
  config = PipelineConfig()
  model = params.pipeline_face_model("default")
  triangles = params.render_triangles(config)
  assert triangles.shape[0] <= 1.01 * config.render_max_triangles < model.triangles.shape[0]
  assert triangles.min() >= 0 and triangles.max() < model.num_vertices
  assert set(np.asarray(model.landmark_vertex_ids).tolist()) <= set(np.unique(triangles).tolist())
  full = params.render_triangles(config.replace(render_max_triangles=0))
  np.testing.assert_array_equal(full, model.triangles)


def test_visible_in_view_by_depth_image_bounds_and_facing():
  """A planted view: triangle 0 faces the camera at depth 10 over the left of a 10 x 8 image,
  triangle 1 faces away at depth 20 over the right (culled, so it hides nothing). A point on
  triangle 0's surface is visible (also at x = 0.5, in the first column); 3 mm behind it is
  hidden beyond a 2 mm tolerance and seen within 5 mm; a point off every surface, or outside
  the image, or on a non-finite position is not; with triangle ids, a point on triangle 1 (back
  facing) or with id -1 is not, whatever its depth."""
  front = [[0.0, 0.0, 10.0], [0.0, 8.0, 10.0], [6.0, 0.0, 10.0]]   # clockwise on screen: front
  back = [[9.9, 0.1, 20.0], [9.9, 7.9, 20.0], [5.0, 0.1, 20.0]]    # counter-clockwise: back
  screen = np.array(front + back)
  raster = rasterizer.rasterize(screen, np.array([[0, 1, 2], [3, 4, 5]]), 8, 10)
  assert raster.front_facing.tolist() == [True, False]
  positions = np.array([[1.0, 2.0, 10.0], [0.5, 3.0, 10.0], [1.0, 2.0, 7.0], [9.0, 5.0, 20.0],
                        [-1.0, 2.0, 10.0], [1.0, np.nan, 10.0], [9.0, 1.0, 20.0]])
  seen = pairs.visible_in_view(raster, positions, None, 2.0)
  assert seen.tolist() == [True, True, False, False, False, False, False]
  assert pairs.visible_in_view(raster, positions[2:3], None, 5.0).tolist() == [True]
  ids = np.array([0, 0, 0, 1, 0, 0, -1])
  seen = pairs.visible_in_view(raster, positions, ids, 2.0)
  assert seen.tolist() == [True, True, False, False, False, False, False]
  # On triangle 0 by depth but given as triangle 1 (back facing) or -1: not visible.
  assert pairs.visible_in_view(raster, positions[:2], np.array([1, -1]), 2.0).tolist() == [
      False, False]
