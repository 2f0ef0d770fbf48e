"""Mutation testing of the core modules with mutmut: the library side of
``python -m experiments.mutation_testing`` (a development tool: mutmut is in
requirements-dev.txt; nothing in the package imports this module).

For each module, copies the repository's code (``dff_jax``, ``data_pipeline``, ``experiments``,
``tests``, ``pytest.ini``) into ``WORKDIR/<module>``, writes a ``setup.cfg`` ``[mutmut]`` section
there that mutates only that module's files and runs only its own test files (:data:`MODULES`),
runs ``mutmut run`` in that copy (the work tree is never touched; re-running continues where
the last run stopped) and merges the module's counts into ``--out``: mutants ``killed``,
``survived``, ``timeout``, ``no_tests`` (no test of the module's files reaches the mutated
function), ``equivalent`` (survivors listed in :data:`EQUIVALENT` with the reason, e.g. a
mutated default that every caller overrides) and ``kill_rate`` =
(killed + timeout + equivalent) / (all checked mutants). ``mutmut results`` /
``mutmut show NAME`` inside ``WORKDIR/<module>`` list and print the survivors.

Each mutant runs its module's tests that call the mutated function (mutmut's per-function test
selection) in a child of one fork server (``process_isolation = forkserver``, warmed up by
collecting the tests: JAX and the test modules are imported once, but no test has run there, so
no XLA client threads or warm jit caches are forked). Cost on the 2-core machine: a few seconds
per mutant (the jit compiles of the selected tests).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]

# module -> (files to mutate, the module's own test files)
MODULES: Dict[str, tuple] = {
    "geometry": (["dff_jax/geometry.py"], ["tests/test_geometry.py"]),
    # Reading and converting the user's images (files and arrays); NumPy and Pillow only.
    "image_io": (["dff_jax/image_io.py"], ["tests/test_image_io.py"]),
    # Atomic writes and the JSON of every output file.
    "file_io": (["dff_jax/file_io.py"], ["tests/test_file_io.py"]),
    "sampling": (["dff_jax/sampling.py"], ["tests/test_sampling.py"]),
    "metrics": (["dff_jax/metrics.py"], ["tests/test_metrics.py"]),
    "losses": (["dff_jax/losses.py"], ["tests/test_losses.py", "tests/test_point_head.py"]),
    "face_model": (["dff_jax/face_model/*"], ["tests/test_face_model.py",
                                              "tests/test_segmentation.py"]),
    # The alignment package's numerical core (file streaming, drawing and the runner are
    # covered by the command tests, not by these unit tests).
    "alignment": (["dff_jax/alignment/fitting.py", "dff_jax/alignment/cascade.py",
                   "dff_jax/alignment/regression.py", "dff_jax/alignment/multiview.py"],
                  ["tests/test_fitting.py", "tests/test_cascade.py",
                   "tests/test_regression.py", "tests/test_multiview.py"]),
    # The output refinement's fit (its step inside the cascade is cascade.refine_state).
    "refinement": (["dff_jax/alignment/refinement.py"], ["tests/test_refinement.py"]),
    # The encoder's convolutions (direct, three-product, Winograd) and the point fields' read.
    "convolution": (["dff_jax/convolution.py"], ["tests/test_convolution.py",
                                                 "tests/test_matmul_dtype.py"]),
    "descriptor_fields": (["dff_jax/descriptor_fields.py"], ["tests/test_point_head.py",
                                                             "tests/test_matmul_dtype.py"]),
    # The renderer's rasteriser: the pairs' exact per-pixel correspondence rests on it.
    "rasterizer": (["data_pipeline/rasterizer.py"], ["tests/test_rasterizer.py",
                                                     "tests/test_visibility_truth.py"]),
    # The training pairs: views, visibility and the per-pixel correspondence between them.
    "pairs": (["data_pipeline/pairs.py"], ["tests/test_pairs.py",
                                           "tests/test_visibility_truth.py",
                                           "tests/test_pipeline_grain.py"]),
    # The DFF encoders (U-Net and point head) and their configuration.
    "encoder": (["dff_jax/encoder.py"], ["tests/test_encoder.py", "tests/test_point_head.py",
                                         "tests/test_matmul_dtype.py",
                                         "tests/test_convolution.py"]),
}

# Survivors shown equivalent (no input can tell them apart from the original), by mutant name
# (``mutmut results``), with the reason. Counted as killed in the kill rate.
_G = "dff_jax.geometry.x_"
_M = "dff_jax.metrics.x_"
_S = "dff_jax.sampling.x_"
_L = "dff_jax.losses.x_"
_FM = "dff_jax.face_model.model.x_"
_FL = "dff_jax.face_model.loaders.x_"
_AC = "dff_jax.alignment.cascade.x_"
_AF = "dff_jax.alignment.fitting.x_"
_AM = "dff_jax.alignment.multiview.x_"
_AR = "dff_jax.alignment.regression.x_"
_RF = "dff_jax.alignment.refinement.x_"
_IO = "dff_jax.image_io.x_"
_FI = "dff_jax.file_io.x_"
_DF = "dff_jax.descriptor_fields.x_"
_CV = "dff_jax.convolution.x_"
_EN = "dff_jax.encoder.x"
_RA = "data_pipeline.rasterizer.x_"
_PA = "data_pipeline.pairs.x"
EQUIVALENT: Dict[str, str] = {
    _G + "matrix_to_euler__mutmut_26": "cos_yaw <= 1e-6 for < 1e-6: both branches give the same "
                                       "angles at the boundary (the lock formula is exact there)",
    _G + "matrix_to_euler__mutmut_48": "arctan2(0, 2) == arctan2(0, 1): the locked branch's safe "
                                       "denominator only needs to be positive",
    _G + "matrix_to_euler__mutmut_62": "roll_free is discarded where lock holds (roll_locked is "
                                       "used); arctan2(1, 1) stays finite, as its gradient",
    _G + "matrix_to_euler__mutmut_71": "arctan2(0, 2) == arctan2(0, 1) (as mutmut_48)",
    _G + "rotate__mutmut_8": "einsum labels in upper case name the same contraction",
    _G + "perspective_project__mutmut_30": "|depth| <= 1e-6 for < 1e-6: at exactly 1e-6 the "
                                           "guarded and the raw depth are equal",
    _G + "perspective_project__mutmut_32": "the guard value of points at the camera (depth 0); "
                                           "their image position is documented as meaningless",
    _G + "crop_pixel_centres_in_image__mutmut_16": "indexing='xy' is meshgrid's default",
    _G + "estimate_similarity__mutmut_51": "target + mean_t for target - mean_t: the covariance "
                                           "sum w (t +- m) cs^T is the same because the weighted "
                                           "source deviations cs sum to zero",
    _G + "estimate_similarity__mutmut_62": "einsum labels in upper case",
    _G + "estimate_similarity__mutmut_70": "det(U) / det(V^T) for det(U) det(V^T): both are +-1",
    _G + "estimate_similarity__mutmut_81": "det_sign is never 0 (U and V^T are orthogonal, "
                                           "det +-1): the where's condition is unreachable",
    _G + "estimate_similarity__mutmut_82": "as mutmut_81: the replaced value is unreachable",
    _G + "estimate_similarity__mutmut_109": "einsum labels in upper case",
    _G + "estimate_similarity__mutmut_132": "sigma / correction for sigma * correction: the "
                                            "correction is +-1",
    _G + "apply_similarity__mutmut_20": "einsum labels in upper case",
    _G + "estimate_similarity__mutmut_150": "einsum labels in upper case",
    **{_G + f"{name}__mutmut_{k}": "points / rotation dropped from the namespace choice: they "
       "only enter through rotate / einsum, which follow their own operands, and a JAX product "
       "there makes the result JAX anyway (also under jit)"
       for name in ("weak_perspective_project", "apply_similarity") for k in (2, 4, 6, 8)},
    _G + "weak_perspective_project__mutmut_26": "/ flip for * flip: flip is (1, -1)",
    _G + "crop_pixel_centres_in_image__mutmut_2": "NumPy grid of static pixel centres: "
                                                  "crop_to_image follows the box's namespace",
    _M + "normaliser_length__mutmut_65": "visible cast to bool or not: xp.where treats any "
                                         "non-zero flag as True either way",
    _M + "normaliser_length__mutmut_67": "as mutmut_65",
    _M + "pck__mutmut_43": "count >= 0 for count > 0: with no valid entry the sum is 0 too, and "
                           "0 / 0 is NaN as documented",
    _M + "nme_by_yaw_bin__mutmut_8": "reshape(-2) for reshape(-1): NumPy takes any negative size "
                                     "as the unknown dimension",
    _M + "nme_by_yaw_bin__mutmut_17": "as mutmut_8",
    _M + "nme_by_yaw_bin__mutmut_40": "float('NAN') is float('nan')",
    _M + "nme_by_yaw_bin__mutmut_13": "yaw kept in its own dtype: comparing float32 or integer "
                                      "angles with the bin edges gives the same bins as in float64",
    _M + "nme_by_yaw_bin__mutmut_15": "as mutmut_13",
    _M + "nme__mutmut_5": "box dropped from nme's namespace: it only enters through "
                          "normaliser_length, which follows it, and dividing by a JAX length makes "
                          "the NME JAX (also under jit)",
    _M + "nme__mutmut_9": "as mutmut_5",
    _S + "bilinear_sample__mutmut_48": "unreachable: points are float by then, so their result "
                                       "type with any map dtype is floating",
    _S + "bilinear_sample__mutmut_51": "points[:, 2] of [N, 2] points: JAX clamps the "
                                       "out-of-range index to 1, the same column",
    **{_S + f"bilinear_sample__mutmut_{k}": "the safe point of outside samples (0.5 -> 1.5): "
       "their values are zeroed and the where passes no gradient to them" for k in (69, 77)},
    **{_S + f"bilinear_sample__mutmut_{k}": "lower clip of floor(u) dropped: u is clipped to "
       ">= 0 just before" for k in (104, 121)},
    **{_S + f"bilinear_sample__mutmut_{k}": "upper clip of the left / top neighbour dropped or "
       "widened: only u = W - 1 (or v = H - 1) reaches it, where the weighted form gives the "
       "last column's value either way (fx = 0 instead of 1), and u is clipped there so no "
       "gradient flows" for k in (105, 108, 116, 122, 125, 133)},
    **{_S + f"bilinear_sample__mutmut_{k}": "max(W - 2, 1) for max(W - 2, 0): differs only for "
       "W = 1, where u is 0 and floor(u) = 0 anyway" for k in (118, 135)},
    **{_S + f"bilinear_sample__mutmut_{k}": "right / lower neighbour capped at W + 1: it exceeds "
       "W - 1 only for W = 1 (or H = 1), where its weight fx (fy) is 0" for k in (143, 152)},
    **{_S + f"bilinear_sample__mutmut_{k}": "the integer-points cast (or the dtype fallback) "
       "skipped or made to the default float: integer points become float32 in the first "
       "arithmetic and the result type of float32 points with any map is floating"
       for k in (32, 37, 44)},
    **{_S + f"bilinear_sample__mutmut_{k}": "the integer corner index cast to the default "
       "float32 instead of u's dtype: small integers are exact in both and the difference is "
       "cast to the result dtype" for k in (157, 161)},
    **{_S + f"bilinear_sample__mutmut_{k}": "take's out-of-range mode: every corner index is in "
       "range (i0, i1 < H, j0, j1 < W)" for k in (189, 193)},
    _S + "bilinear_sample__mutmut_215": "corners[4] of a size-4 axis: JAX clamps the static "
                                        "index to 3, the same corner",
    _S + "crop_image__mutmut_51": "arange without float32: + 0.5 makes the offsets float32",
    _S + "crop_image__mutmut_53": "as mutmut_51",
    _S + "crop_image__mutmut_62": "indexing='xy' is meshgrid's default",
    _S + "crop_image__mutmut_81": "centres - offsets for + offsets: the k x k offsets are "
                                  "symmetric about 0, so the same samples are averaged",
    _S + "crop_image__mutmut_89": "the fill term cast to the default float: values are float32 "
                                  "or wider already (points are float32), so the sum's dtype is "
                                  "unchanged",
    "dff_jax.sampling.x_crop_image__mutmut_25": "jnp.asarray(box) without float32: float boxes "
                                                "are float32 anyway (x64 off) and integer boxes "
                                                "become float32 in the crop-grid arithmetic",
    "dff_jax.sampling.x_crop_image__mutmut_27": "as mutmut_25",
    _L + "combined_loss__mutmut_19": "info_nce_weight's default None for 0.0: `or 0.0` turns both "
                                     "into 0.0",
    _L + "combined_loss__mutmut_37": "jnp.zeros((), None) for float32: the default dtype is "
                                     "float32 (x64 off), and the weighted terms are float32",
    _L + "combined_loss__mutmut_39": "as mutmut_37 (the dtype argument left out)",
    _L + "combined_loss__mutmut_63": "concatenate without axis=0: 0 is the default axis",
    _L + "combined_loss__mutmut_69": "as mutmut_63",
    _L + "combined_loss__mutmut_71": "vertex_ids[:, 2] of a [B, 2, ...] array: JAX clamps the "
                                     "static out-of-range index to 1, the same view",
    _L + "sample_valid_pixels__mutmut_5": "valid.shape[+1] for [-1]: valid is [B, H * W], "
                                          "axis 1 is the last",
    _L + "sample_valid_pixels__mutmut_8": "as mutmut_5, in the error message",
    _L + "_sample_points__mutmut_9": "l2_normalize's default axis is -1",
    _L + "_sample_points__mutmut_10": "axis=+1 of the [K, D] values is the last axis",
    **{_L + f"init_patch_classifiers__mutmut_{k}": "dtype None or left out: the default float "
       "dtype is float32 (x64 off), as the documented one" for k in (24, 27, 33, 35)},
    _L + "sample_valid_pixels__mutmut_16": "valid.astype(None): the default float dtype is "
                                          "float32 (x64 off)",
    _L + "sample_valid_pixels__mutmut_29": "axis=+1 of the [B, H * W] mask is its last axis",
    **{_L + f"info_nce_loss__mutmut_{k}": "astype(None): the default float dtype is float32 "
       "(x64 off), the points' / masks' documented dtype" for k in (31, 38, 97, 129, 132, 167)},
    _L + "info_nce_loss__mutmut_51": "einsum labels in upper case",
    _L + "sample_valid_pixels__mutmut_28": "take_along_axis's default axis is -1",
    **{_L + f"patch_classification_loss__mutmut_{k}": "take_along_axis's default axis is -1, "
       "axis 1 of the [B, N] vertex ids" for k in (97, 130)},
    **{_L + f"patch_classification_loss__mutmut_{k}": "astype(None): the default float dtype is "
       "float32 (x64 off), the documented math dtype" for k in (77, 81, 100, 153, 155, 180, 215,
                                                              219)},
    _L + "patch_classification_loss__mutmut_165": "einsum labels in upper case",
    **{_L + f"info_nce_loss__mutmut_{k}": "argmax over the other axis in both directions swaps "
       "the a->b and b->a counts, and only their sum (the accuracy) is reported" for k in (80, 81)},
    **{_L + f"info_nce_loss__mutmut_{k}": "logits are [B, K, K]: shape[1] and shape[-2] are K as "
       "shape[-1]" for k in (55, 56)},
    # face_model (model.py: the 3DMM math; loaders.py)
    **{_FM + k: "einsum labels in upper case" for k in (
        "vertices__mutmut_10", "vertices__mutmut_18", "albedo__mutmut_15",
        "landmarks_3d__mutmut_45", "landmarks_3d__mutmut_53", "contour_vertex_ids__mutmut_35",
        "contour_vertex_ids__mutmut_67")},
    **{_FM + f"landmarks_3d__mutmut_{k}": "a coefficient array dropped from the namespace choice: "
       "the coefficients only enter through einsum, which follows its own operands (a JAX "
       "product makes the result JAX, also under jit)" for k in (4, 5, 8, 9)},
    **{_FM + f"contour_vertex_ids__mutmut_{k}": "the image direction of the model x axis rescaled "
       "by a positive factor (its norm, a batch-wide norm or ~1 instead of its own norm, which is "
       "<= 1): every candidate's outward value of a row is scaled alike, argmax unchanged"
       for k in (41, 48, 51, 58)},
    **{_FM + f"contour_vertex_ids__mutmut_{k}": "the side signs (+-1, 0) in float64 or with a "
       "magnitude of 2: a positive rescale of a row (argmax unchanged) and the same signs for "
       "turned_away" for k in (71, 73, 78, 82)},
    **{_FM + f"contour_vertex_ids__mutmut_{k}": "only the chin row (8) can change, and its "
       "candidates are one vertex repeated (build_contour_candidates), so any choice is that "
       "vertex" for k in (80, 89, 115, 120, 121)},
    _FM + "contour_vertex_ids__mutmut_98": "take_along_axis's default axis is -1 (NumPy 2, JAX)",
    _FM + "contour_vertex_ids__mutmut_104": "candidates is [17, M]: shape[+1:] == shape[-1:]",
    **{_FL + f"load_face_model__mutmut_{k}": "the default asset's own name is ict_default (the "
       "face_model_ict recipe writes it), so not renaming it gives the same name"
       for k in (8, 10)},
    **{_FL + f"save_face_model__mutmut_{k}": "the expression names are a tuple of str: asarray "
       "infers a str array without dtype=str, and reshape(None) / reshape(-2) of a 1-d array keep "
       "it (an empty tuple reads back as () either way)" for k in (45, 47, 49, 51)},
    **{_FL + f"_load_path__mutmut_{k}": "allow_pickle None or left out: np.load's default is "
       "False" for k in (16, 18)},
    # alignment (cascade.py, fitting.py, regression.py, multiview.py)
    **{_AC + f"zero_params__mutmut_{k}": "jnp.zeros / ones / asarray without float32: the default "
       "dtype is float32 (x64 off) and the initial pose is a float [6]"
       for k in (14, 16, 20, 22, 24, 26, 28, 30)},
    **{_AC + f"make_alignment_model__mutmut_{k}": "a dtype left to NumPy's choice where the value "
       "is cast to float32 / int32 anyway (jnp.asarray with x64 off; np.arange assigned into the "
       "int32 row table; the model's bases are float32)"
       for k in (140, 142, 149, 151, 153, 155, 173, 175, 178, 180)},
    _AC + "make_alignment_model__mutmut_147": "concatenate's default axis is 0",
    _AC + "make_alignment_model__mutmut_89": "chunks of 65 with a step of 64 overlap by one "
                                             "vertex, which gets the same normal twice",
    # align_images / describe_and_align / align_working_images changed in the session of
    # 2026-12-03 (afternoon): their survivors are reviewed again after the next run.
    **{_AC + f"align_crops__mutmut_{k}": "remat only changes what the backward pass stores "
       "(jax.checkpoint), never a value; None is falsy like False" for k in (1, 6, 11)},
    _AC + "map_in_chunks__mutmut_6": "chunk == batch then runs lax.map over one chunk of "
                                     "the whole batch: the same call and values",
    _AC + "map_in_chunks__mutmut_7": "batch / chunk and batch % chunk are truthy for the "
                                     "same (positive) chunks: zero exactly when it divides",
    **{_AF + f"{name}__mutmut_{k}": "jnp.asarray / ones without float32: float inputs become "
       "float32 with x64 off, integer ones are promoted to float32 by the first float arithmetic"
       for name, ks in (("estimate_pose_weak_perspective", (3, 5, 8, 10, 14, 16, 21, 23)),
                        ("fit_shape_linear", (3, 5, 16, 18, 27, 29, 31, 33, 35, 37, 39, 41, 50,
                                              52)))
       for k in ks},
    **{_AF + f"fit_shape_linear__mutmut_{k}": "jnp.asarray(vertex_ids) without int32: integer ids "
       "are int32 with x64 off" for k in (10, 12)},
    **{_AF + f"_fit_shape_single__mutmut_{k}": "the flip vector without float32: the default "
       "float dtype (x64 off)" for k in (8, 10)},
    _AF + "_fit_shape_single__mutmut_15": "/ flip for * flip: flip is (1, -1)",
    **{_AF + f"_fit_shape_single__mutmut_{k}": "einsum labels in upper case"
       for k in (28, 37, 48, 64)},
    **{_AM + f"align_multiview_crops__mutmut_{k}": "remat (True / None) never changes a value"
       for k in (2, 21, 29)},
    **{_AM + f"{name}__mutmut_{k}": "asarray / ones without float32: float32 with x64 off (the "
       "mask is 0 / 1, boxes and images are promoted by the first float arithmetic)"
       for name, ks in (("align_multiview_crops", (7, 9, 38, 40)),
                        ("align_multiview_images", (9, 11, 14, 16)))
       for k in ks},
    **{_AC + f"align_images__mutmut_{k}": "boxes / images without float32: integer boxes and "
       "uint8 images give the float answer (tests/test_cascade.py checks it), promoted by the "
       "first float arithmetic" for k in (9, 11, 14, 16)},
    **{_AF + f"validate_landmarks__mutmut_{k}": "the landmarks kept in float64 until the final "
       "astype(float32): one rounding either way" for k in (3, 5)},
    **{_AF + f"{name}__mutmut_{k}": "_vmap_leading only tells None (not batched) from a rank: "
       "2 -> 3 or 1 -> 2 there maps the same axes"
       for name, ks in (("estimate_pose_weak_perspective", (40, 41, 42)),
                        ("fit_shape_linear", (68, 69, 70, 71, 72, 73)))
       for k in ks},
    _AC + "make_alignment_model__mutmut_48": "the mesh rounds' summed normals have norms far "
                                             "above 1 (sums of many unit normals): max(norm, "
                                             "1.000000000001) is the norm",
    _AC + "make_alignment_model__mutmut_49": "sigma >= 0 at sigma 0: every window weight is "
                                             "exp(-inf) = 0 or NaN, so the where keeps the mesh "
                                             "normal, as the skipped branch does",
    _AC + "make_alignment_model__mutmut_61": "cross(a, c - b) with a = b - v0: cross(b - v0, "
                                             "(c - v0) - (b - v0)) = cross(b - v0, c - v0)",
    _AC + "make_alignment_model__mutmut_84": "range(0, n) instead of step 64: overlapping "
                                             "chunks give every vertex the same normal again",
    _AC + "make_alignment_model__mutmut_124": "norm >= 1e-12 for > 1e-12 differs only for a "
                                              "window sum of norm exactly 1e-12 (unreachable "
                                              "in practice: sums are 0 or far larger)",
    _AC + "make_alignment_model__mutmut_181": "np.asarray(mean_vertices) without float32 before "
                                              "jnp.asarray: loaded models hold float32, and "
                                              "jnp.asarray makes float32 without jax x64",
    "dff_jax.alignment.regression.xǁStatisticsǁadd_sums__mutmut_10": "np.asarray(cross) without float64 added in place "
                                              "to a float64 sum: NumPy promotes float32 exactly",
    _AF + "_fit_scale_translation_shape_single__mutmut_34": "einsum labels in upper case name "
                                                          "the same contraction",
    _AF + "_fit_scale_translation_shape_single__mutmut_43": "jnp.eye(2) without float32 is "
                                                          "float32 without jax x64",
    **{_AF + f"_fit_single__mutmut_{k}": "the jaw dropped from the first pose estimate in "
       "contour='fixed' mode too: with fixed ids every pass re-estimates the pose from the same "
       "points with all weights, independently of the first estimate, which is discarded"
       for k in (25, 26)},
    _AF + "_nearest_scaled_rotation_rows__mutmut_15": "s[0, 2] of the 2 x 2 s = m m^T: JAX "
                                                      "clamps the out-of-range index to s[0, 1]",
    _AF + "fit_shape_and_pose__mutmut_5": "jnp.asarray(landmarks) without float32: float input "
                                          "is float32 without jax x64, and integer pixels are "
                                          "promoted by the first float arithmetic",
    _AF + "_estimate_pose_single__mutmut_46": "the affine solve's ridge of 1e-6 trace / 3 "
                                              "made 1e-6 trace / 4: the solutions differ below "
                                              "float32 resolution for non-coplanar points",
    _AF + "_estimate_pose_single__mutmut_90": "rows[2] of the 2 x 3 rows: JAX clamps the "
                                              "out-of-range index to rows[1]",
    _AF + "_nearest_scaled_rotation_rows__mutmut_74": "matmul without precision='highest': "
                                                      "XLA:CPU (the tests' platform) computes "
                                                      "float32 matmuls in full precision at "
                                                      "every setting (not so on TPU)",
    _AF + "select_landmark_vertex_ids__mutmut_12": "jnp.asarray(landmark_vertex_ids) without "
                                                   "int32: loaded models hold int32 ids",
    **{_AC + f"crop_faces__mutmut_{k}": "boxes without float32: integer boxes give the float "
       "answer (tests/test_cascade.py checks it through align_images), promoted by square_box's "
       "first float arithmetic" for k in (7, 9)},
    _AC + "regress__mutmut_14": "jnp.dot without precision=HIGHEST: XLA:CPU (the tests' "
                                "platform) computes float32 in full precision at every setting "
                                "(not so on TPU)",
    _AC + "stage_features__mutmut_17": "the constant 1 as jnp.ones without the descriptors' "
                                       "dtype: float32 without jax x64, as the float32 "
                                       "descriptors the docstring requires",
    _AC + "fixed_landmarks__mutmut_25": "einsum without precision='highest': XLA:CPU (the tests' "
                                        "platform) computes float32 in full precision at every "
                                        "setting (not so on TPU)",
    _AM + "fit_joint_shape_rows__mutmut_152": "einsum without precision='highest': XLA:CPU "
                                              "(the tests' platform) computes float32 in full "
                                              "precision at every setting (not so on TPU)",
    _AM + "run_multiview_cascade__mutmut_9": "jnp.ones without float32 is float32 without jax "
                                             "x64, and the next line casts to float32 anyway",
    _AR + "select_regularisation__mutmut_2": "the shared spectrum is spectrum(train, held_out) "
                                             "of the same statistics: recomputing it is the same",
    # image_io: the pixels of a Pillow I / I;16 / F image are never an empty array.
    **{_IO + f"_to_uint8__mutmut_{k}": "the initial value of max / nanmax only matters for an "
       "empty array, and a decoded image has pixels" for k in (10, 12, 13, 35, 36)},
    _IO + "_to_uint8__mutmut_48": "integers / 257.0 are float64 whatever they are cast to first",
    **{_IO + f"_to_uint8__mutmut_{k}": "the upper clip of the last branch: its values are at "
       "most 255 by the branch's condition" for k in (56, 61)},
    _IO + "_to_rgb__mutmut_10": "Image.convert(None) of a palette image with transparency is "
                                "RGBA (Pillow's rule), as convert('RGBA')",
    **{_IO + f"_to_rgb__mutmut_{k}": "PA / RGBa / La: modes no Pillow decoder returns for a file, "
       "so read_image never sees them" for k in range(32, 40)},
    **{_IO + f"_to_rgb__mutmut_{k}": "np.asarray of an RGB / RGBA Pillow image is uint8 with or "
       "without the dtype" for k in (45, 47, 60, 62)},
    **{_IO + f"_to_rgb__mutmut_{k}": "convert('RGB') of an RGB image is a copy of it"
       for k in (52, 53)},
    **{_IO + f"as_rgb__mutmut_{k}": "float64 for float32 in the compositing: the same uint8 for "
       "every (value, alpha, background) triple and every mix of the two dtypes (checked "
       "exhaustively, 256^3 triples)" for k in (40, 46, 50, 52)},
    **{_IO + f"as_rgb__mutmut_{k}": "the clip of composite + 0.5, which lies in [0.5, 255.5]: "
       "no lower bound, or an upper bound of 256, truncates to the same uint8"
       for k in (57, 58, 65)},
    **{_IO + f"rgb_to_grey__mutmut_{k}": "int64 for uint32: 255 * 65536 + 2^15 fits both"
       for k in (12, 14, 21, 23, 25)},
    **{_IO + f"_to_grey__mutmut_{k}": "an L image through _to_rgb and rgb_to_grey is itself: "
       "the fixed-point weights sum to 2^16 (and np.asarray of L is uint8 anyway)"
       for k in (2, 3, 6, 8)},
    _IO + "write_png_atomic__mutmut_41": "Pillow takes the format name in any case",
    _IO + "read_image__mutmut_10": "Image.draft's requested size None keeps the full size, as "
                                   "the image's own size does",
    _FI + "write_text_atomic__mutmut_10": "'UTF-8' and 'utf-8' name the same codec",
    _FI + "write_json_atomic__mutmut_27": "allow_nan=None is falsy, as False: NaN still raises",
    **{_FI + f"json_safe__mutmut_{k}": "the shortcut for arrays with nothing to replace: without "
       "it the array's list is walked and every value kept, the same result"
       for k in (1, 3, 4, 6, 7, 8)},
    **{_FI + f"write_json_atomic__mutmut_{k}": "a failing first encoding (no document, or no "
       "option for non-string keys) falls back to json_safe and encodes the same values"
       for k in (7, 8, 9, 28)},
    **{_IO + f"_open__mutmut_{k}": "megapixels as / 1000001 for / 1e6: a relative change of "
       "1e-6, invisible at :g's 6 significant digits and at .1f below 50,000 megapixels"
       for k in (15, 32, 34)},
    **{_RF + f"collect__mutmut_{k}": "a face box or annotation converted without float64: "
       "working_crop converts the box to float64 itself, and image_to_crop returns float64"
       for k in (27, 29, 35)},
    **{_RF + f"synthetic_faces__mutmut_{k}": "a render's labels or box without float64: "
       "collect converts both" for k in (16, 18, 34, 36)},
    **{_RF + f"refine_cascade__mutmut_{k}": "a photo's landmark box without float64: collect "
       "converts it" for k in (57, 59)},
    _RF + "refine_cascade__mutmut_16": "cache=None is as falsy as cache=False",
    **{_RF + f"refine_cascade__mutmut_{k}": "slice(None, n) and slice(n) are slice(0, n)"
       for k in (134, 136)},
    _RF + "refine_cascade__mutmut_44": "the annotation kept float32: collect converts it to "
                                       "float64, and its landmark box is the points' exact "
                                       "min / max in either dtype",
    _RF + "refine_cascade__mutmut_13": "resolve_aligner's face_model defaults to None",
    _RF + "refine_cascade__mutmut_19": "cache=True only keeps the loaded aligner for reuse in "
                                       "the process; the same aligner is loaded",
    _RF + "refine_cascade__mutmut_93": "collect's default batch size: padding changes, each "
                                       "face's features and outputs do not",
    _RF + "refine_cascade__mutmut_101": "NumPy reads any negative size in reshape as the "
                                        "inferred one (-2 as -1)",
    **{_RF + f"fit_weights__mutmut_{k}": "features / targets left in their dtype: the rows' "
       "weights are float64 ones, so batch_sums' products are float64 anyway (the held-out "
       "targets' squares aside, rounded to float32: a relative 6e-8 of the error sums)"
       for k in (14, 17, 19)},
    **{_DF + f"head_apply__mutmut_{k}": "the float32 branch's test made false: float32 "
       "operands then take the other branch (astype float32, float32 accumulation), the same "
       "product on XLA:CPU" for k in (4, 5)},
    **{_DF + f"head_apply__mutmut_{k}": "precision HIGHEST dropped: XLA:CPU, the tests' "
       "platform, computes float32 products in full precision at every setting" for k in (9, 12)},
    _DF + "head_apply__mutmut_31": "astype(None) is the default float dtype, float32 (x64 off); "
                                   "the pyramid samples are float32 already",
    _DF + "pyramid_samples__mutmut_12": "as head_apply__mutmut_31",
    _DF + "pyramid_samples__mutmut_15": "inside from the last level instead of level 0: levels "
                                        "halve exactly (the encoder needs sides divisible by "
                                        "2 ** (L - 1)), so every level's rule is level 0's",
    _DF + "pyramid_samples__mutmut_21": "axis=+1 of [K, C_l] samples is the last axis",
    _DF + "query__mutmut_7": "astype(None) is float32 (x64 off), and a dense map's samples are "
                             "float32 already (bilinear_sample promotes with float32 points)",
    **{_DF + f"query__mutmut_{k}": "points in the default dtype: float points stay float32 (x64 "
       "off), integer ones become float32 in p / 2 ** l" for k in (10, 12)},
    _DF + "vmap_faces__mutmut_26": "h[1] for h[0]: a shared head is the same for every face, "
                                   "and JAX clamps index 1 to 0 for a single face",
    _DF + "_has_shared_head__mutmut_6": "> 1 for > 0: a single face is then read by a plain vmap, "
                                        "the same values (sharing only batches the products)",
    **{_DF + f"pixel_centres__mutmut_{k}": "arange without float32: + 0.5 makes the centres "
       "float32" for k in (9, 11, 13, 15)},
    _DF + "pixel_centres__mutmut_32": "axis=+1 of two stacked [N] arrays is the last axis",
    _DF + "concatenate__mutmut_23": "shared_head None for False: both are falsy where it is read",
    **{_DF + f"num_faces__mutmut_{k}": "the first entry of any leading prefix of the shape (None: "
       "the whole shape) is the face axis" for k in (3, 6)},
    **{_CV + f"{name}__mutmut_{k}": "one more row, column or channel of zero padding after the "
       "last: the windows read stop before it (H x W outputs, C channels)"
       for name, k in (("shifted_conv3x3", 10), ("shifted_conv3x3", 12), ("shifted_conv3x3", 14),
                       ("matmul_conv3x3", 13), ("matmul_conv3x3", 15))},
    **{_CV + f"_transform_rows__mutmut_{k}": "a coefficient of +-1 multiplied instead of "
       "added or negated: the same values (the special cases only spare multiplies)"
       for k in (11, 15, 19)},
    _CV + "xla_conv3x3__mutmut_16": "padding 'same' for 'SAME': lax reads the name in any case",
    **{_CV + f"winograd_kernel__mutmut_{k}": "range(4) over a 3-long axis: JAX clamps index 3 "
       "to 2, and _transform_rows zips the 3 coefficients of each row with the first 3 parts"
       for k in (7, 14)},
    **{_EN + f"__field__mutmut_{k}": "the default replaced by None: every caller's default is "
       "None" for k in (2, 4, 10, 13)},
    **{_EN + f"__upsample_bilinear_2x__mutmut_{k}": "slice_in_dim's start None is 0 and its "
       "limit None the axis length" for k in (4, 16, 30, 47)},
    **{_EN + f"_preprocess_images__mutmut_{k}": "the default float dtype is float32 (x64 off)"
       for k in (16, 32, 34)},
    _EN + "ǁDFFEncoderǁ_block__mutmut_1": "final_activation's default: every caller passes it",
    _EN + "ǁDFFEncoderǁ_pyramid__mutmut_2": "the images left in their dtype: the first block's "
                                           "convolution promotes its input to dtype",
    _EN + "ǁDFFEncoderǁ_pyramid__mutmut_24": "padding left out: flax's Conv pads 'SAME' by default",
    _EN + "ǁDFFEncoderǁ_pyramid__mutmut_33": "padding 'same' for 'SAME': flax reads it in any case",
    _RA + "rasterize__mutmut_30": "area <= 0 for < 0: a zero area is dropped by the next line",
    **{_RA + f"rasterize__mutmut_{k}": "the image-box prefilter joined with |: it keeps only "
       "triangles lying outside the image on one axis, which hold no pixel centre and no point "
       "of the image" for k in (91, 92, 93)},
    **{_RA + f"rasterize__mutmut_{k}": "a cell box widened (start clipped lower, end clipped "
       "higher, for images at least two pixels wide): front_surface_at only tests more "
       "candidates, each decided by its barycentrics" for k in (129, 131, 137, 149, 151, 157)},
    **{_RA + f"rasterize__mutmut_{k}": "the pixel range widened by one (still within the "
       "image): the extra pixel centres are decided by their barycentrics"
       for k in (169, 178, 190, 199)},
    _RA + "rasterize__mutmut_318": "the depth-range guard 1e-9 -> 1.000000001: dividing a range "
                                   "below 1 by 1 keeps every rank below 0.5, the same order",
    **{_RA + f"{name}__mutmut_{k}": "NumPy reads the sort kind in any case"
       for name, k in (("rasterize", 327), ("front_surface_at", 179))},
    _RA + "front_surface_at__mutmut_11": "NumPy reads any negative size in reshape as -1",
    **{_RA + f"front_surface_at__mutmut_{k}": "np.full(num, -1) is int64 without the dtype"
       for k in (24, 27)},
    _RA + "front_surface_at__mutmut_53": "with no point inside the image (or no kept triangle) "
                                         "the rest finds nothing and returns the same defaults",
    **{_RA + f"front_surface_at__mutmut_{k}": "the cell's lower clip dropped: points inside the "
       "image have floor(x), floor(y) >= 0" for k in (63, 76)},
    **{_RA + f"front_surface_at__mutmut_{k}": "the summed-area table in another dtype: counts "
       "of cells are exact in int64 and float64 alike" for k in (99, 101, 111, 113)},
    **{_RA + f"front_surface_at__mutmut_{k}": "the touched-box test widened (a sum that can only "
       "grow: sat is non-negative and grows with row and column; or >= 0): more candidates, "
       "each decided by its barycentrics" for k in (123, 124, 139, 140, 141)},
    _RA + "front_surface_at__mutmut_187": "side='left' is searchsorted's default",
    **{_PA + f"ǁPairSourceǁ__getitem____mutmut_{k}": "the prepared model is not kept (or not "
       "made) for the next item: generate_sample prepares it itself from the config, the same "
       "values" for k in (16, 17)},
    **{_PA + f"ǁPairSourceǁ__init____mutmut_{k}": "a list of Python ints is int64 without the "
       "dtype" for k in (7, 9)},
    _EN + "_encoder_from_config__mutmut_58": "'XXXX' for '' without a preset: neither is a preset "
                                             "name, so both look up {}",
}

_PACKAGES = ("dff_jax", "data_pipeline")  # what a module's files may live in
_COPY = _PACKAGES + ("experiments", "tests", "pytest.ini")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "results", "assets_cache")

def setup_cfg(module: str) -> str:
  """The ``[mutmut]`` section of a module: its files' packages (of :data:`_PACKAGES`) are the
  sources, the rest of :data:`_COPY` is copied beside them."""
  paths, tests = MODULES[module]
  sources = [p for p in _PACKAGES if any(path.startswith(p + "/") for path in paths)]
  copied = [p for p in _COPY if p not in sources]
  lines = ["[mutmut]", "source_paths = " + "\n  ".join(sources),
           "only_mutate = " + "\n  ".join(paths),
           "pytest_add_cli_args_test_selection = " + "\n  ".join(tests),
           "also_copy = " + "\n  ".join(copied),
           "pytest_add_cli_args = -p no:cacheprovider -q -x",
           "process_isolation = forkserver", "forkserver_warmup = collect", ""]
  return "\n".join(lines)


def prepare(module: str, workdir: Path, fresh: bool) -> Path:
  """``workdir/module``: a copy of the code with the module's ``setup.cfg``."""
  root = workdir / module
  if fresh and root.exists():
    shutil.rmtree(root)
  root.mkdir(parents=True, exist_ok=True)
  for name in _COPY:
    source, target = REPO / name, root / name
    if source.is_dir():
      shutil.copytree(source, target, ignore=_IGNORE, dirs_exist_ok=True)
    else:
      shutil.copy2(source, target)
  (root / "setup.cfg").write_text(setup_cfg(module))
  # mutmut runs the tests inside root/mutants, whose ../shared is root/shared: link the real one,
  # or every test that needs ../shared data would skip and its mutants count as untested.
  shared, link = REPO.parent / "shared", root / "shared"
  if shared.is_dir() and not link.exists():
    link.symlink_to(shared)
  return root


def exit_codes(root: Path) -> Dict[str, Any]:
  """``{mutant name: mutmut exit code (None: not checked)}`` from ``mutants/**/*.meta``."""
  codes: Dict[str, Any] = {}
  for meta in sorted((root / "mutants").rglob("*.meta")):
    codes.update(json.loads(meta.read_text()).get("exit_code_by_key", {}))
  return codes


def sample_names(names: List[str], size: int, seed: int) -> List[str]:
  """``size`` of ``names`` drawn uniformly without replacement: the first ``size`` of a seeded
  shuffle of the sorted names, so the samples of one seed are nested (a larger sample extends a
  smaller one and a later run can continue it); returned sorted."""
  import random  # pylint: disable=g-import-not-at-top
  order = sorted(names)
  random.Random(seed).shuffle(order)
  return sorted(order[:size])


def sample_record(names: List[str], seed: int, total: int) -> Dict[str, Any]:
  """The ``sample`` entry of a module's scores: its size, seed and the number sampled from."""
  return dict(size=len(names), seed=seed, of=total,
              how="uniform without replacement over all of the module's mutants "
                  "(dff_jax.mutation.sample_names)")


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> List[float]:
  """95 % Wilson score interval of a binomial proportion (``[low, high]``)."""
  if trials == 0:
    return [0.0, 1.0]
  p = successes / trials
  centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
  half = z * (p * (1 - p) / trials + z * z / (4 * trials * trials)) ** 0.5 / (1 + z * z / trials)
  return [round(centre - half, 4), round(centre + half, 4)]


def count(root: Path, names: Optional[List[str]] = None) -> Dict[str, Any]:
  """Counts of the module's mutants by status from mutmut's ``mutants/**/*.meta`` files (only
  ``names`` when given: a sample)."""
  from mutmut.stats import status_by_exit_code  # pylint: disable=g-import-not-at-top
  counts: Dict[str, int] = {}
  survivors: List[str] = []
  untested: List[str] = []
  equivalent: List[str] = []
  codes = exit_codes(root)
  if names is not None:
    codes = {name: codes[name] for name in names}
  for name, code in codes.items():
    status = status_by_exit_code[code]
    if status == "survived" and name in EQUIVALENT:
      status = "equivalent"
      equivalent.append(name)
    elif status == "survived":
      survivors.append(name)
    elif status == "no tests":
      untested.append(name)
    counts[status] = counts.get(status, 0) + 1
  checked = sum(v for k, v in counts.items() if k not in ("not checked",))
  caught = counts.get("killed", 0) + counts.get("timeout", 0) + counts.get("equivalent", 0)
  result = dict(counts=counts, mutants=sum(counts.values()), checked=checked,
                kill_rate=round(caught / checked, 4) if checked else None,
                survivors=survivors, untested=untested,
                equivalent={n: EQUIVALENT[n] for n in equivalent})
  if checked:
    result["kill_rate_95ci"] = wilson_interval(caught, checked)
  if counts.get("not checked"):
    result["partial"] = (f"only {checked} of {result['mutants']} mutants checked (run stopped); "
                         "the kill rate is over those")
  return result


def run_module(module: str, workdir: Path, max_children: int, fresh: bool,
               retest_survivors: bool = False, sample: int = 0,
               seed: int = 0) -> Dict[str, Any]:
  """Runs mutmut on ``module``'s copy and counts its mutants (:func:`count`).

  With ``sample > 0`` only a seeded uniform sample of ``sample`` of the module's mutants is run
  (those of it not checked yet) and counted: an estimate of the kill rate with its 95 %
  interval, for a module too slow to run in full. ``retest_survivors`` re-runs the survivors
  and untested mutants (of the sample, when given) after tests were added.
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONDONTWRITEBYTECODE="1")
  names: List[str] = []
  if retest_survivors and (workdir / module / "mutants").exists():
    counted = count(workdir / module)
    names = counted["survivors"] + counted["untested"]
  root = prepare(module, workdir, fresh)
  if retest_survivors:
    # The copies of the tests changed: mutmut must not reuse its per-test timing / coverage.
    (root / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
  chosen: Optional[List[str]] = None
  if sample:
    if not exit_codes(root):   # mutants not generated yet: generate them, run none
      subprocess.run([sys.executable, "-m", "mutmut", "run", "no_such_mutant"], cwd=root,
                     env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    codes = exit_codes(root)
    chosen = sample_names(list(codes), sample, seed)
    if retest_survivors:
      names = [name for name in names if name in set(chosen)]
    else:
      names = [name for name in chosen if codes[name] is None]
  start = time.time()
  returncode = 0
  if names or chosen is None:
    proc = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children",
                           str(max_children), *names], cwd=root, env=env, check=False,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    returncode = proc.returncode
    if proc.returncode:
      print(proc.stderr[-3000:], file=sys.stderr)
  result = count(root, chosen)
  if chosen is not None:
    result["sample"] = sample_record(chosen, seed, len(codes))
  paths, tests = MODULES[module]
  result.update(files=paths, tests=tests, tool=f"mutmut {_mutmut_version()}",
                seconds=round(time.time() - start, 1), exit_code=returncode,
                command=(f"python -m experiments.mutation_testing --modules={module} "
                         f"--max_children={max_children}" + (" --fresh" if fresh else "")
                         + (f" --sample={sample} --seed={seed}" if sample else "")
                         + (" --retest_survivors" if retest_survivors else "")))
  return result


def _mutmut_version() -> str:
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  return importlib.metadata.version("mutmut")
