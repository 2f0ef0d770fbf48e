"""Real faces as fitted, textured meshes (data_pipeline/real_faces.py), checked on a planted face.

A synthetic face of known shape and known (procedural) albedo is rendered flat-lit as a "photo";
its 68 projected landmarks are the annotation. The face model is fitted to them, the texture is
lifted from the photo, and the face is re-rendered: at the photo's pose the pixels must come back,
and at a new pose every surface point must land where the true mesh puts it.
"""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from data_pipeline import params, rasterizer, real_faces, real_views, readers, shading
from data_pipeline.config import PipelineConfig
from dff_jax import geometry

PHOTO_SIZE = 160


def _project(vertices, scale, rotation, translation):
  return params.screen_points(vertices, dict(scale=scale, rotation=rotation,
                                             translation_px=np.asarray(translation)))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
  """The planted face: photo file, true geometry and pose, and the RealFaces bank of its fit."""
  from dff_jax import real_fits  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("real_faces")
  pipeline = PipelineConfig(image_size=128, render_max_triangles=10000)
  prepared = params.prepared_for(pipeline)
  model = prepared.model
  rng = np.random.default_rng(3)
  shape = np.zeros(model.num_identity, np.float32)
  shape[:8] = rng.normal(size=8) * 0.7
  expression = np.zeros(model.num_expression, np.float32)
  vertices = prepared.vertices(shape, expression).astype(np.float64)
  rotation = geometry.euler_to_matrix(0.08, 0.35, 0.05)
  scale, translation = 0.55, np.array([82.0, 78.0])
  screen = _project(vertices, scale, rotation, translation)
  raster = rasterizer.rasterize(screen, prepared.triangles, PHOTO_SIZE, PHOTO_SIZE)
  albedo = shading.face_albedo(model, np.zeros(model.num_albedo), rng.random(16))
  colour = np.sqrt(np.asarray(albedo, np.float64)[prepared.used_vertices])
  photo = shading.shade_pixels(raster, prepared.triangles, colour)
  photo = np.where((raster.triangle_ids >= 0)[..., None], photo, 0.5)
  photo_u8 = (np.clip(photo, 0, 1) * 255 + 0.5).astype(np.uint8)
  photo_path = root / "face.png"
  Image.fromarray(photo_u8).save(photo_path)
  full = prepared.full_vertices(vertices)
  ids = params.landmark_vertex_ids_for_pose(model, rotation, full)
  landmarks = _project(full[ids], scale, rotation, translation)[:, :2]
  fits = real_fits.fit_annotated_faces(model, landmarks[None], num_iterations=30)
  fits_path = root / "fits.npz"
  summary = real_fits.save_fits(fits_path, ["face"], [photo_path], landmarks[None], fits,
                                "default", max_residual=1.0)
  bank = real_faces.RealFaces(real_faces.RealFacesConfig(fits=str(fits_path), pipeline=pipeline))
  # The same face with the exact parameters as its "fit": isolates lifting and re-rendering from
  # the depth ambiguity of a fit to 68 points.
  exact = dict(fits, pose=np.array([[scale, 0.08, 0.35, 0.05, *translation]], np.float32),
               shape_coefficients=shape[None], expression_coefficients=expression[None])
  exact_path = root / "exact.npz"
  real_fits.save_fits(exact_path, ["face"], [photo_path], landmarks[None], exact, "default",
                      max_residual=1.0)
  exact_bank = real_faces.RealFaces(real_faces.RealFacesConfig(fits=str(exact_path),
                                                               pipeline=pipeline))
  return dict(bank=bank, exact_bank=exact_bank, prepared=prepared, vertices=vertices, rotation=rotation, scale=scale,
              translation=translation, raster=raster, screen=screen,
              photo=photo_u8.astype(np.float32) / 255, summary=summary, landmarks=landmarks)


def test_fit_cache_records_the_fit(planted):
  summary = planted["summary"]
  assert summary["num_faces"] == 1 and summary["num_kept"] == 1
  assert summary["residual_median"] < 0.01  # noise-free landmarks of the model itself
  bank = planted["bank"]
  assert len(bank) == 1
  np.testing.assert_allclose(bank.landmarks_px[0], planted["landmarks"], atol=1e-4)
  # The fitted pose is the planted one (yaw sign included).
  assert abs(bank.pose[0, 2] - 0.35) < 0.02 and abs(bank.pose[0, 1] - 0.08) < 0.03


def test_relifted_texture_reproduces_the_photo_at_its_pose(planted):
  bank, prepared = planted["bank"], planted["prepared"]
  face = bank.face(0)
  rendered = real_faces.render_textured(face["photo"], face["texture"], face["photo_raster"],
                                        prepared.triangles)
  # Interior face pixels of both the true and the fitted mesh (2 px away from either silhouette).
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  both = (planted["raster"].triangle_ids >= 0) & (face["photo_raster"].triangle_ids >= 0)
  interior = ndimage.binary_erosion(both, iterations=2)
  assert interior.sum() > 3000
  difference = np.abs(rendered - planted["photo"])[interior]
  assert difference.mean() < 0.004, difference.mean()
  assert np.percentile(difference, 99) < 0.03


@pytest.mark.parametrize("which, mean_px, p95_px", [
    # Exact geometry: lifting, the photo-to-surface lookup and re-projection are exact.
    ("exact_bank", 0.05, 0.5),
    # Fitted to the 68 landmarks alone: depth and the identity / expression split are ambiguous
    # (scale 2 % low, shape coefficients off by up to 0.9 sigma here), so points move by ~1 px
    # (2 % of the 50 px eye distance) in a 40-degree turn.
    ("bank", 1.5, 4.0),
])
def test_new_pose_correspondences_match_the_true_mesh(planted, which, mean_px, p95_px):
  """Surface points seen in the photo land, in a view turned by -40 degrees of yaw, where the
  true mesh puts them; the re-rendered pixel there shows the photo's colour."""
  bank, prepared = planted[which], planted["prepared"]
  face = bank.face(0)
  turn = geometry.euler_to_matrix(0.0, -0.7, 0.0)
  true_rotation = turn @ planted["rotation"]
  true_new = _project(planted["vertices"], planted["scale"], true_rotation,
                      planted["translation"])
  fitted = face["photo_view"]
  fitted_new_view = dict(fitted, rotation=turn @ fitted["rotation"])
  fitted_new = params.screen_points(face["vertices"], fitted_new_view)

  # Random surface points of the true mesh, seen in the photo and in the true new view.
  rng = np.random.default_rng(0)
  triangles = prepared.triangles
  tri = rng.integers(0, len(triangles), 4000)
  bary = rng.dirichlet(np.ones(3), 4000)
  photo_points = np.einsum("nk,nkd->nd", bary, planted["screen"][triangles[tri]])
  new_points = np.einsum("nk,nkd->nd", bary, true_new[triangles[tri]])
  new_raster = rasterizer.rasterize(true_new, triangles, PHOTO_SIZE, PHOTO_SIZE)
  from data_pipeline import pairs  # pylint: disable=g-import-not-at-top
  seen = pairs.visible_in_view(planted["raster"], photo_points, tri, 0.05)
  seen &= pairs.visible_in_view(new_raster, new_points, tri, 0.05)
  assert seen.sum() > 500
  # Where the fitted surface under each photo point goes in the fitted new view.
  _, fit_tri, fit_bary = rasterizer.front_surface_at(face["photo_raster"], photo_points[seen, :2])
  on = fit_tri >= 0
  assert on.mean() > 0.98
  predicted = np.einsum("nk,nkd->nd", fit_bary[on], fitted_new[triangles[fit_tri[on]]])[:, :2]
  error = np.linalg.norm(predicted - new_points[seen][on, :2], axis=1)
  assert np.mean(error) < mean_px, np.mean(error)
  assert np.percentile(error, 95) < p95_px, np.percentile(error, 95)

  # The re-rendered view shows the photo's colour at those points.
  fit_raster = rasterizer.rasterize(fitted_new, triangles, PHOTO_SIZE, PHOTO_SIZE)
  rendered = real_faces.render_textured(face["photo"], face["texture"], fit_raster, triangles)
  shown = real_faces.sample_image(rendered, predicted)
  expected = real_faces.sample_image(planted["photo"], photo_points[seen][on, :2])
  inside = fit_raster.triangle_ids[np.clip(predicted[:, 1].astype(int), 0, PHOTO_SIZE - 1),
                                   np.clip(predicted[:, 0].astype(int), 0, PHOTO_SIZE - 1)] >= 0
  assert np.median(np.abs(shown - expected)[inside]) < 0.02


def test_mirror_vertex_ids_are_an_involution_on_the_mean_face(planted):
  mean = planted["prepared"].mean.reshape(-1, 3)
  mirror = real_faces.mirror_vertex_ids(mean)
  # The mirror vertex sits at the reflection (to within the decimated mesh's spacing) ...
  distance = np.linalg.norm(mean[mirror] - mean * np.array([-1.0, 1.0, 1.0]), axis=1)
  assert np.median(distance) < 1.5 and np.percentile(distance, 90) < 4.0
  # ... reflecting twice mostly comes back, and the mirror crosses x = 0.
  assert np.mean(np.linalg.norm(mean[mirror[mirror]] - mean, axis=1) < 2.0) > 0.9
  off_axis = np.abs(mean[:, 0]) > 5
  assert np.mean(np.sign(mean[mirror[off_axis], 0]) == -np.sign(mean[off_axis, 0])) > 0.99


def test_real_face_source_views_are_deterministic_and_annotated(planted):
  bank = planted["bank"]
  config = real_faces.RealFacesConfig(fits=bank.config.fits, pipeline=bank.config.pipeline,
                                      photo_fraction=0.5)
  source = real_views.RealFaceSource(config, num_examples=12)
  kinds = []
  for i in range(12):
    example = source[i]
    kinds.append(int(example["kind"]))
    assert example["image"].shape == (128, 128, 3) and example["image"].dtype == np.uint8
    assert np.all(np.isfinite(example["landmarks_px"]))
    assert example["model_landmarks"] == np.bool_(False)   # the inner points are annotated
    if example["kind"] == 0:  # the photo: annotation mapped by the placement, all visible
      assert example["landmarks_visible"].all()
  assert set(kinds) == {0, 1}
  again = real_views.RealFaceSource(config, num_examples=12)
  for i in (0, 5):
    np.testing.assert_array_equal(source[i]["image"], again[i]["image"])
    np.testing.assert_array_equal(source[i]["landmarks_px"], again[i]["landmarks_px"])


def test_photo_view_maps_the_annotation_with_its_placement(planted):
  """The photo placed in the view: its pixels move with the landmarks (a dark dot planted at a
  landmark is found at the mapped landmark)."""
  bank = planted["bank"]
  config = real_faces.RealFacesConfig(fits=bank.config.fits, pipeline=bank.config.pipeline)
  face = bank.face(0)
  rng = np.random.default_rng(1)
  a, b = real_views.photo_placement(rng, config.pipeline, face, bank.prepared)
  photo = np.full_like(face["photo"], 0.8)
  x, y = face["landmarks_px"][30]
  photo[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2] = 0.0  # 3 x 3 dot around pixel (x, y)
  placed = real_views.place_photo(photo, a, b, 128)
  centre = (np.floor([x, y]) + 0.5) * a + b  # the dot's centre pixel, mapped
  darkness = 1.0 - placed.mean(-1)
  ys, xs = np.nonzero(darkness > 0.5 * darkness.max())
  found = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
  assert np.linalg.norm(found - centre) < 0.5


def test_real_pair_source_correspondences(planted):
  bank = planted["bank"]
  for kinds in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)):
    config = real_faces.RealFacesConfig(fits=bank.config.fits,
                                        pipeline=bank.config.pipeline.replace(
                                            num_correspondences=64), pair_kinds=kinds)
    sample = real_views.RealPairSource(config, num_examples=4)[2]
    assert sample["images"].shape == (2, 128, 128, 3)
    assert sample["points_a_px"].shape == (64, 2) and sample["valid"].any()
    valid = sample["valid"]
    # Both ends of a valid correspondence show the face (labelled pixels) in their view.
    for view, key in ((0, "points_a_px"), (1, "points_b_px")):
      pts = np.clip(sample[key][valid].astype(int), 0, 127)
      assert np.mean(sample["vertex_ids"][view][pts[:, 1], pts[:, 0]] >= 0) > 0.9


def test_read_faces68_fixture(tmp_path):
  (tmp_path / "images").mkdir()
  landmarks = (np.random.default_rng(0).random((68, 2)) * 50 + 10).round(4)
  Image.fromarray(np.zeros((70, 80, 3), np.uint8)).save(tmp_path / "images" / "afw_1_1.jpg")
  (tmp_path / "val.json").write_text(json.dumps({"afw_1_1": {
      "landmarks_px": landmarks.tolist(), "source": "afw", "size_wh": [80, 70]}}))
  entries = readers.read_faces68(tmp_path, "val")
  assert len(entries) == 1 and entries[0].name == "afw_1_1" and entries[0].size_wh == (80, 70)
  np.testing.assert_allclose(entries[0].landmarks_px, landmarks, atol=1e-4)  # no conversion
  with pytest.raises(readers.LandmarkReadError, match="train.json"):
    readers.read_faces68(tmp_path, "train")
  (tmp_path / "bad.json").write_text(json.dumps({"afw_1_1": {"landmarks_px": [[1, 2]] * 5}}))
  with pytest.raises(readers.LandmarkReadError, match="68"):
    readers.read_faces68(tmp_path, json_path=tmp_path / "bad.json")
  (tmp_path / "missing.json").write_text(json.dumps({"nope": {"landmarks_px": [[1, 2]] * 68}}))
  with pytest.raises(readers.LandmarkReadError, match="not found"):
    readers.read_faces68(tmp_path, json_path=tmp_path / "missing.json")


def test_mirror_68_is_a_left_right_involution():
  mirror = real_faces.MIRROR_68
  assert sorted(mirror.tolist()) == list(range(68))
  np.testing.assert_array_equal(mirror[mirror], np.arange(68))
  assert mirror[36] == 45 and mirror[0] == 16 and mirror[48] == 54 and mirror[30] == 30


def test_validate_rederives_real_pair_correspondences(planted):
  from data_pipeline import validate  # pylint: disable=g-import-not-at-top
  report = validate.validate(planted["bank"].config.pipeline.replace(num_correspondences=64), 4,
                             real_fits=planted["bank"].config.fits)
  assert report["ok"], report
  assert report["max_reprojection_error_px"] < 1e-3 and report["occluded_matches"] == 0


def test_lift_cache_serves_the_same_views_and_refuses_other_fits(planted, tmp_path):
  """The stored lift (experiments.lift_real_faces) replaces the per-face lift: same texture
  sources, colours within float16 rounding, same annotation surface; the generators' views and
  correspondences are the same. A cache of other fits is refused, naming the rebuild command."""
  import pickle  # pylint: disable=g-import-not-at-top
  bank = planted["bank"]
  path = tmp_path / "lifts.npz"
  meta = real_faces.save_lifts(path, bank)
  assert meta["num_faces"] == 1 and meta["num_vertices"] == bank.prepared.mean.reshape(-1, 3).shape[0]
  config = dataclasses.replace(bank.config, lifts=str(path))
  cached = real_faces.RealFaces(config)
  face, stored = bank.face(0), cached.face(0)
  assert stored["photo_raster"] is None
  np.testing.assert_array_equal(stored["texture"].source, face["texture"].source)
  np.testing.assert_array_equal(stored["texture"].photo_px, face["texture"].photo_px)
  np.testing.assert_allclose(stored["texture"].colour, face["texture"].colour, atol=5e-4)
  for a, b in zip(stored["annotation_surface"], face["annotation_surface"]):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert (face["texture"].source == real_faces.SOURCE_MIRROR).any()  # the mirror path is covered
  for kinds in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)):
    pair_config = dataclasses.replace(bank.config, pair_kinds=kinds)
    fresh = real_views.RealPairSource(pair_config, num_examples=3)[1]
    again = real_views.RealPairSource(dataclasses.replace(pair_config, lifts=str(path)),
                                      num_examples=3)[1]
    for key in ("points_a_px", "points_b_px", "valid", "vertex_ids"):
      np.testing.assert_array_equal(again[key], fresh[key])
    diff = np.abs(again["images"].astype(int) - fresh["images"].astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01
  view_config = dataclasses.replace(bank.config, photo_fraction=0.0)
  fresh = real_views.RealFaceSource(view_config, num_examples=2)[1]
  again = real_views.RealFaceSource(dataclasses.replace(view_config, lifts=str(path)),
                                    num_examples=2)[1]
  np.testing.assert_allclose(again["landmarks_px"], fresh["landmarks_px"], atol=1e-4)
  np.testing.assert_array_equal(again["landmarks_visible"], fresh["landmarks_visible"])
  # Pickles without the loaded arrays (grain workers load their own).
  assert pickle.loads(pickle.dumps(cached))._lift_cache is None
  # The cache belongs to the fits it was made from.
  other = dataclasses.replace(planted["exact_bank"].config, lifts=str(path))
  with pytest.raises(ValueError, match="fits_sha256.*lift_real_faces"):
    real_faces.RealFaces(other).face(0)
  with pytest.raises(FileNotFoundError, match="lift_real_faces --fits="):
    real_faces.RealFaces(dataclasses.replace(config, lifts=str(tmp_path / "none.npz"))).face(0)
