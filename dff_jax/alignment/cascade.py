"""The paper's alignment cascade on descriptor fields, as one ``lax.scan`` over stages.

State per face (``AlignmentState``): 68 landmarks, pose ``p = (s, pitch, yaw, roll, tx, ty)``,
identity and expression coefficients, landmark visibility. One stage (``paper.md``, "Alignment"):

1. project the model's 68 landmark vertices (jaw on the silhouette for the current pose,
   :func:`dff_jax.face_model.model.landmark_vertex_ids_for_pose`) with the current pose and shape;
   a landmark is visible when its smoothed vertex normal faces the camera (silhouette jaw points
   are visible by construction);
2. read the crop's descriptor field at the projected points with
   :func:`dff_jax.descriptor_fields.query` (a dense map bilinearly, a point field through its
   head; zero for invisible or out-of-crop points) and stack them into ``f = [d_0, ..., d_67, 1]``;
3. ``x <- x + W_k f`` (landmarks) and ``p <- p + sigma_p * (V_k f)`` (pose, residuals in units of
   their training standard deviations);
4. fit identity + expression to the updated landmarks under the updated pose
   (:func:`fit_shape_rows`: the objective and solution of
   :func:`dff_jax.alignment.fitting.fit_shape_linear`, on basis rows gathered once per stage);
5. re-project: the next stage starts from the fitted model's landmarks (same basis rows).

Everything runs in the **crop frame**: a square ``crop_size`` image cut from the face box
(:func:`dff_jax.geometry.square_box`), points ``(x, y)`` in crop pixels with pixel ``(i, j)``
centred at ``(j + 0.5, i + 0.5)``. :func:`align_images` crops, runs the encoder and the cascade
and maps the results back to image pixels inside one jitted function; :func:`align_working_images`
does the same for images that already are their face's crop box (the runner's working images).

The stage parameters are stacked on a leading axis ``K`` (``CascadeParams``), so the cascade is a
``lax.scan``; one face is a pure function, and batches are ``vmap`` of it. Test-time mirroring
(``mirror=True``) also describes each crop mirrored left-right and averages every stage's step 3
on the two crops (:func:`apply_stage`, :func:`mirror_estimate`).

Length: about 800 lines, kept in one module on purpose: the model precomputation, the five steps
of a stage, the scan and the crop / uncrop around it are one algorithm whose pieces are read
together (the multi-view cascade, ridge training and fine-tuning call into each of them).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dff_jax import descriptor_fields
from dff_jax import geometry
from dff_jax import sampling
from dff_jax.alignment import fitting
from dff_jax.face_model import jax_support  # noqa: F401  (FaceModel pytree)
from dff_jax.face_model import model as face_model_lib
from dff_jax.face_model.contour import vertex_normals

Array = Any
FaceModel = face_model_lib.FaceModel
NUM_LANDMARKS = face_model_lib.NUM_LANDMARKS
POSE_NAMES = ("scale", "pitch_rad", "yaw_rad", "roll_rad", "tx_px", "ty_px")
POSE_DIM = len(POSE_NAMES)


# ----------------------------------------------------------------------------------------------
# Pytrees and static configuration
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CascadeConfig:
  """Static (hashable) settings of the cascade.

  Attributes:
    num_stages: K, the number of regression stages.
    crop_size: side of the square crop the descriptors are computed on (pixels).
    box_scale: the face box is made square with side ``box_scale * max(w, h)`` before cropping.
    shape_regularisation: Tikhonov lambda of the per-stage shape fit (mm^2, see
      :func:`dff_jax.alignment.fitting.fit_shape_linear`).
    visibility_threshold: a landmark is visible when the camera-z of its smoothed normal exceeds
      this value (0 = facing the camera at all).
  """
  num_stages: int = 5
  crop_size: int = 128
  box_scale: float = 1.25
  shape_regularisation: float = 10.0
  visibility_threshold: float = 0.0


@flax.struct.dataclass
class AlignmentModel:
  """The face model plus the static geometry the cascade reads (a pytree).

  Attributes:
    face_model: the 3DMM.
    normals: ``[V, 3]`` float32 smoothed unit vertex normals of the mean shape (model space).
    landmark_mean: ``[R, 3]`` float32 mean-shape positions (mm) of the R vertices that can be
      landmarks (``landmark_vertex_ids``, ``landmark_3d_vertex_ids`` and
      ``contour_candidates``), vertex-major copies made
      once so that a stage gathers 68 contiguous rows instead of strided basis columns.
    landmark_basis: ``[R, 3, Ki + Ke]`` float32 identity then expression basis of those vertices.
    row_of_vertex: ``[V]`` int32 row of each of those vertices in ``landmark_mean`` /
      ``landmark_basis`` (0 for every other vertex: only landmark vertex ids may be looked up).
    landmark_offsets: ``[68, 3]`` float32 model-space offsets (mm) added to each of the 68
      landmarks' vertex positions wherever the cascade reads them (:func:`landmark_rows`): the
      landmark *convention* of a trained cascade (zeros: the model's own landmark vertices;
      :func:`dff_jax.real_fits.estimate_landmark_offsets` estimates them from
      annotated faces).
    output_offsets: ``[68, 3]`` float32 model-space offsets (mm) that move only the output
      ``landmarks_px`` (:func:`state_to_image`), projected under the final pose: a calibration
      of the aligner's outputs to an annotation convention, estimated from its own errors on
      annotated training faces (:func:`dff_jax.alignment.calibration.estimate_output_offsets`);
      the cascade itself never reads them. Zeros: none.
    fit_basis: optional ``[R, 3, M]`` float32: ``landmark_basis`` in the coordinates the
      cascade's shape fit solves for (step 4), ``M <= Ki + Ke`` directions of the coefficient
      space (:func:`with_fit_modes`); ``None``: the fit solves for all ``Ki + Ke`` coefficients
      (``landmark_basis`` itself, prior precision :func:`fitting._prior_precision`).
    fit_coefficients: ``[M, Ki + Ke]`` float32 with ``fit_basis``: fit coordinates ``z``
      ``[M]`` are the coefficients ``z @ fit_coefficients``; the prior in them is ``|z|^2``.
  """
  face_model: FaceModel
  normals: Array
  landmark_mean: Array
  landmark_basis: Array
  row_of_vertex: Array
  landmark_offsets: Array
  output_offsets: Array
  fit_basis: Optional[Array] = None
  fit_coefficients: Optional[Array] = None


@flax.struct.dataclass
class AlignmentState:
  """One face's estimate, crop frame (a pytree; batched by vmap).

  Attributes:
    landmarks_px: ``[68, 2]`` float32 crop pixels (x, y).
    visibility: ``[68]`` float32 in {0, 1}.
    pose: ``[6]`` float32 ``(scale px/mm, pitch, yaw, roll (rad), tx, ty (crop px))``.
    shape_coefficients: ``[Ki]`` float32.
    expression_coefficients: ``[Ke]`` float32.
    landmark_agreement: optional ``[68]`` float32 in [-1, 1]: the cosine of each descriptor
      the last stage read with the cascade's template for that landmark
      (:func:`landmark_agreement`; 0 where it read none). Set on the final state of a cascade
      with a ``descriptor_template`` (:func:`run_cascade`); ``None`` otherwise and on every
      per-stage state.
    agreement: optional ``[]`` float32: the mean of ``landmark_agreement`` over the landmarks
      whose descriptors were read: how much the crop looks like a face where the cascade put
      its points (low for a box on no face).
  """
  landmarks_px: Array
  visibility: Array
  pose: Array
  shape_coefficients: Array
  expression_coefficients: Array
  landmark_agreement: Optional[Array] = None
  agreement: Optional[Array] = None


@flax.struct.dataclass
class CascadeParams:
  """Learned regressors, stacked over the K stages (a pytree).

  Attributes:
    landmark_weights: ``[K, F, 136]`` float32, ``F = 68 * D + 1``; maps features to landmark
      offsets (crop pixels, x/y interleaved per landmark).
    pose_weights: ``[K, F, 6]`` float32; maps features to pose offsets in units of ``pose_std``.
    pose_std: ``[K, 6]`` float32 standard deviation of each stage's training pose residuals.
    initial_pose: ``[6]`` float32 mean training pose in the crop frame (the starting point).
    hidden_weights: optional ``[K, F, H]`` float32: a residual hidden layer beside the linear
      regressors (``None``: a purely linear cascade, as the two-stage training makes it).
    output_weights: ``[K, H, 142]`` float32 with ``hidden_weights``: maps
      ``gelu(features @ hidden_weights)`` to 136 more landmark offsets and 6 more pose offsets
      (units of ``pose_std``), added to the linear ones (:func:`regress`).
    refine_weights: optional ``[F, 136]`` float32: the output refinement, one linear step after
      the last stage that moves the output points freely (not through the face model): the
      features the last stage read times these weights, added to the final ``landmarks_px``
      only (:func:`refine_state`; fitted by :mod:`dff_jax.alignment.refinement`). ``None``:
      none.
    descriptor_template: optional ``[68, D]`` float32 unit rows: each landmark's mean descriptor
      as the last stage reads it on annotated training faces (fitted by
      :mod:`dff_jax.alignment.agreement`); the final state's ``landmark_agreement`` and
      ``agreement`` compare the read descriptors with it. ``None``: no agreement.
  """
  landmark_weights: Array
  pose_weights: Array
  pose_std: Array
  initial_pose: Array
  hidden_weights: Optional[Array] = None
  output_weights: Optional[Array] = None
  refine_weights: Optional[Array] = None
  descriptor_template: Optional[Array] = None

  @property
  def num_stages(self) -> int:
    return self.landmark_weights.shape[0]

  @property
  def descriptor_dim(self) -> int:
    return (self.landmark_weights.shape[1] - 1) // NUM_LANDMARKS

  @property
  def hidden_units(self) -> int:
    """H of the residual hidden layer (0 without one)."""
    return 0 if self.hidden_weights is None else int(self.hidden_weights.shape[-1])

  def stages(self) -> Tuple[Array, ...]:
    """The per-stage arrays with a leading ``[K]`` axis, in the order :func:`regress` reads one
    stage: ``(landmark_weights, pose_weights, pose_std[, hidden_weights, output_weights])``
    (what ``lax.scan`` runs over)."""
    linear = (self.landmark_weights, self.pose_weights, self.pose_std)
    return linear if self.hidden_weights is None else linear + (self.hidden_weights,
                                                                self.output_weights)


HIDDEN_FIELDS = ("hidden_weights", "output_weights")  # optional: a residual hidden layer
STAGE_FIELDS = ("landmark_weights", "pose_weights", "pose_std") + HIDDEN_FIELDS


def add_hidden_layer(params: CascadeParams, units: int, key: Array) -> CascadeParams:
  """``params`` with a residual hidden layer of ``units`` units in every stage that changes
  nothing yet: ``output_weights`` are zero (so the cascade's results are exactly the linear
  ones), ``hidden_weights`` are normal with standard deviation ``1 / sqrt(69)`` (the features
  are 68 unit-length descriptors and a constant 1, so the pre-activations start near unit
  scale). End-to-end training (:mod:`dff_jax.training.finetune`) then learns both.

  Raises:
    ValueError: ``units < 1`` or ``params`` already has a hidden layer.
  """
  if units < 1:
    raise ValueError(f"add_hidden_layer: units must be >= 1, got {units}")
  if params.hidden_weights is not None:
    raise ValueError(f"the cascade already has a hidden layer of {params.hidden_units} units")
  num_stages, feature_dim, _ = params.landmark_weights.shape
  hidden = jax.random.normal(key, (num_stages, feature_dim, int(units)), jnp.float32)
  return params.replace(
      hidden_weights=hidden / np.sqrt(NUM_LANDMARKS + 1.0),
      output_weights=jnp.zeros((num_stages, int(units), 2 * NUM_LANDMARKS + POSE_DIM),
                               jnp.float32))


def zero_params(num_stages: int, descriptor_dim: int, initial_pose: Array) -> CascadeParams:
  """Regressors that change nothing (the cascade then returns its initial state): a starting
  point for tests and for end-to-end training.

  Args:
    num_stages: K.
    descriptor_dim: D of the descriptor maps.
    initial_pose: ``[6]`` starting pose in the crop frame.
  """
  feature_dim = NUM_LANDMARKS * descriptor_dim + 1
  return CascadeParams(
      landmark_weights=jnp.zeros((num_stages, feature_dim, 2 * NUM_LANDMARKS), jnp.float32),
      pose_weights=jnp.zeros((num_stages, feature_dim, POSE_DIM), jnp.float32),
      pose_std=jnp.ones((num_stages, POSE_DIM), jnp.float32),
      initial_pose=jnp.asarray(initial_pose, jnp.float32))


def make_alignment_model(model: FaceModel, smoothing_rounds: int = 2,
                         smoothing_sigma_mm: float = 8.0,
                         landmark_offsets: Optional[Array] = None,
                         output_offsets: Optional[Array] = None) -> AlignmentModel:
  """Precomputes (NumPy) the smoothed mean-shape vertex normals used for visibility.

  Every vertex gets its area-weighted normal averaged ``smoothing_rounds`` times with its mesh
  neighbours. The vertices that can be landmarks (``landmark_vertex_ids``,
  ``landmark_3d_vertex_ids`` and ``contour_candidates``) then get a geometric smoothing instead: the normalised sum of the
  area-weighted normals of all face / head vertices within a Gaussian window of
  ``smoothing_sigma_mm`` around them. Mesh-neighbour rounds smooth over a few millimetres only
  on a dense mesh (ICT: ~1 mm spacing), and the eye landmarks sit on the eyelid margins, whose
  normals point into the eye opening (the outer corner of the far eye "faces" the camera at
  80 degrees yaw); the paper's "smoothed normals" must reflect the face surface around the
  landmark, at the scale of the eye (~1 cm).

  Args:
    model: the face model (NumPy arrays; model space, mm).
    smoothing_rounds: rounds of averaging each normal with its mesh neighbours.
    smoothing_sigma_mm: Gaussian window of the landmark vertices' normals (mm); 0 disables it.
    landmark_offsets: optional ``[68, 3]`` model-space offsets (mm) of the 68 landmarks (see
      :class:`AlignmentModel`; a cascade file's :func:`landmark_offsets_of`); default zeros.
    output_offsets: optional ``[68, 3]`` output calibration (mm, :class:`AlignmentModel`; a
      cascade file's :func:`output_offsets_of`); default zeros.

  Returns:
    :class:`AlignmentModel` holding JAX arrays.
  """
  vertices = np.asarray(model.mean_vertices, np.float64)
  triangles = np.asarray(model.triangles)
  # The vertices that can be landmarks: the frontal 68, every jaw contour candidate and the
  # 3D-convention jaw.
  ids = np.unique(np.concatenate([np.asarray(model.landmark_vertex_ids).ravel(),
                                  np.asarray(model.contour_candidates).ravel(),
                                  np.asarray(model.landmark_3d_vertex_ids).ravel()]))
  normals = vertex_normals(vertices, triangles)
  for _ in range(smoothing_rounds):
    summed = np.zeros_like(normals)
    face_sum = normals[triangles].sum(axis=1)  # [T, 3]
    for k in range(3):
      np.add.at(summed, triangles[:, k], face_sum)
    normals = summed / np.maximum(np.linalg.norm(summed, axis=1, keepdims=True), 1e-12)
  if smoothing_sigma_mm > 0:
    face_normals = np.cross(vertices[triangles[:, 1]] - vertices[triangles[:, 0]],
                            vertices[triangles[:, 2]] - vertices[triangles[:, 0]])
    area_normals = np.zeros_like(vertices)
    for k in range(3):
      np.add.at(area_normals, triangles[:, k], face_normals)
    skin = np.isin(np.asarray(model.vertex_part),
                   (face_model_lib.PART_FACE, face_model_lib.PART_HEAD_NECK))
    skin_points, skin_normals = vertices[skin], area_normals[skin]
    for start in range(0, len(ids), 64):
      chunk = ids[start:start + 64]
      distance2 = np.sum((vertices[chunk, None, :] - skin_points[None]) ** 2, axis=-1)
      smoothed = np.exp(-0.5 * distance2 / smoothing_sigma_mm**2) @ skin_normals
      norm = np.linalg.norm(smoothed, axis=1, keepdims=True)
      normals[chunk] = np.where(norm > 1e-12, smoothed / np.maximum(norm, 1e-12), normals[chunk])
  row_of_vertex = np.zeros((vertices.shape[0],), np.int32)
  row_of_vertex[ids] = np.arange(len(ids), dtype=np.int32)
  basis = np.concatenate([np.asarray(model.identity_basis, np.float32)[:, ids],
                          np.asarray(model.expression_basis, np.float32)[:, ids]], axis=0)
  jax_model = jax.tree_util.tree_map(jnp.asarray, model)
  return AlignmentModel(
      face_model=jax_model, normals=jnp.asarray(normals, jnp.float32),
      landmark_mean=jnp.asarray(np.asarray(model.mean_vertices, np.float32)[ids]),
      landmark_basis=jnp.asarray(np.transpose(basis, (1, 2, 0))),
      row_of_vertex=jnp.asarray(row_of_vertex),
      landmark_offsets=jnp.asarray(checked_landmark_offsets(landmark_offsets)),
      output_offsets=jnp.asarray(checked_landmark_offsets(output_offsets, "output offsets")))


def alignment_model_for(model: FaceModel, meta: Mapping[str, Any],
                        fit_modes: Optional[int] = None) -> AlignmentModel:
  """The alignment model of a cascade file: ``model`` with the landmark offsets, the output
  calibration and the shape fit's modes its ``meta`` carries (:func:`landmark_offsets_of`,
  :func:`output_offsets_of`, :func:`fit_modes_of`); ``fit_modes`` given: those instead."""
  meta = dict(meta)
  if fit_modes is not None:
    meta["fit_modes"] = fit_modes
  return with_fit_modes(
      make_alignment_model(model, landmark_offsets=landmark_offsets_of(meta),
                           output_offsets=output_offsets_of(meta)), fit_modes_of(meta))


def fit_modes_of(meta: Mapping[str, Any]) -> Optional[int]:
  """The number of directions the cascade's shape fit solves for, from a cascade file's
  ``meta["fit_modes"]`` (:func:`with_fit_modes`); ``None`` (absent): all coefficients.

  Raises:
    ValueError: the entry is not a positive integer.
  """
  modes = meta.get("fit_modes")
  if modes is None:
    return None
  return checked_fit_modes(modes, "the cascade's fit_modes",
                           "the cascade file is damaged or was written by another program")


def checked_fit_modes(modes: Any, what: str, advice: str) -> int:
  """``modes`` as an ``int`` if it is a positive whole number (not a bool or a float).

  Raises:
    ValueError: ``"{what} must be a positive integer (directions of the shape fit), got
      {modes!r}; {advice}"``.
  """
  if isinstance(modes, bool) or not isinstance(modes, (int, np.integer)) or modes < 1:
    raise ValueError(f"{what} must be a positive integer (directions of the shape fit), got "
                     f"{modes!r}; {advice}")
  return int(modes)


def fit_subspace(landmark_basis: np.ndarray, prior_precision: np.ndarray, modes: int
                 ) -> np.ndarray:
  """The ``modes`` directions of the coefficient space that move the landmark vertices most
  under the shape prior: ``[modes, K]`` float32 ``T`` with coefficients ``c = z @ T``.

  Under the prior ``c ~ N(0, diag(1 / prior_precision))`` the vertex displacements
  ``landmark_basis @ c`` have covariance ``B S^2 B^T`` (``S = diag(prior_precision^-1/2)``);
  with ``B S = U diag(sigma) V^T`` (``B``: ``landmark_basis`` as ``[3R, K]``), ``T = (S
  V_modes)^T`` spans its ``modes`` largest principal directions, and the prior ``c^T diag(
  prior_precision) c`` is ``|z|^2`` in them. Restricted to these directions, step 4's
  regularised fit is the full fit's on the subspace that holds the most of the prior's
  landmark variance. The fit depends only on that subspace (the signs and the order of ``T``'s
  rows, which another LAPACK may choose differently, change ``z`` but not ``c``).

  Args:
    landmark_basis: ``[R, 3, K]`` basis rows (mm per unit coefficient).
    prior_precision: ``[K]`` positive.
    modes: ``1 <= modes <= K``.
  """
  rows, _, size = landmark_basis.shape
  if not 1 <= modes <= size:
    raise ValueError(f"fit_modes must be between 1 and {size} (the model's identity plus "
                     f"expression coefficients), got {modes}")
  scale = 1.0 / np.sqrt(np.asarray(prior_precision, np.float64))
  whitened = np.asarray(landmark_basis, np.float64).reshape(rows * 3, size) * scale
  _, _, vt = np.linalg.svd(whitened, full_matrices=False)
  return (vt[:modes] * scale[None, :]).astype(np.float32)


def with_fit_modes(alignment_model: AlignmentModel, modes: Optional[int]) -> AlignmentModel:
  """``alignment_model`` whose shape fit (step 4) solves for ``modes`` directions of the
  coefficient space (:func:`fit_subspace`) instead of all ``Ki + Ke`` coefficients.

  The fit's normal equations are ``[modes, modes]`` instead of ``[Ki + Ke, Ki + Ke]``, so
  their cost falls with the square and the Cholesky's with the cube of ``modes``; the state
  still carries all coefficients (``z @ fit_coefficients``). ``None``: every coefficient (the
  model as it is).
  """
  if modes is None:
    return alignment_model.replace(fit_basis=None, fit_coefficients=None)
  basis = np.asarray(alignment_model.landmark_basis, np.float32)
  precision = np.asarray(fitting._prior_precision(  # pylint: disable=protected-access
      alignment_model.face_model))
  coefficients = fit_subspace(basis, precision, modes)
  fit_basis = np.einsum("rjk,mk->rjm", basis.astype(np.float64),
                        coefficients.astype(np.float64)).astype(np.float32)
  return alignment_model.replace(fit_basis=jnp.asarray(fit_basis),
                                 fit_coefficients=jnp.asarray(coefficients))


def checked_landmark_offsets(offsets: Optional[Array], what: str = "landmark offsets"
                             ) -> np.ndarray:
  """``[68, 3]`` float32 landmark offsets (mm): zeros for ``None``; ``what`` names them in the
  error.

  Raises:
    ValueError: wrong shape or non-finite values (one-line message).
  """
  if offsets is None:
    return np.zeros((NUM_LANDMARKS, 3), np.float32)
  offsets = np.asarray(offsets, np.float32)
  if offsets.shape != (NUM_LANDMARKS, 3) or not np.all(np.isfinite(offsets)):
    raise ValueError(f"{what} must be a finite [{NUM_LANDMARKS}, 3] array (mm), got "
                     f"shape {offsets.shape}")
  return offsets


def landmark_offsets_of(meta: dict) -> Optional[np.ndarray]:
  """The ``[68, 3]`` landmark offsets (mm) a cascade file's meta carries
  (``landmark_offsets_mm``), or ``None`` for a cascade without them (the model's own
  landmark vertices)."""
  value = meta.get("landmark_offsets_mm")
  return None if value is None else checked_landmark_offsets(value)


def output_offsets_of(meta: dict) -> Optional[np.ndarray]:
  """The ``[68, 3]`` output calibration (mm) a cascade file's meta carries
  (``output_offsets_mm``, written by ``python -m experiments.calibrate_outputs``), or ``None``."""
  value = meta.get("output_offsets_mm")
  return None if value is None else checked_landmark_offsets(value, "output offsets")


# ----------------------------------------------------------------------------------------------
# One face, one stage
# ----------------------------------------------------------------------------------------------


def pose_rotation(pose: Array) -> Array:
  """``[..., 6]`` pose vector -> ``[..., 3, 3]`` rotation (Euler order of dff_jax.geometry)."""
  return geometry.euler_to_matrix(pose[..., 1], pose[..., 2], pose[..., 3])


def landmark_rows(alignment_model: AlignmentModel, vertex_ids: Array) -> Tuple[Array, Array]:
  """``(mean [68, 3] mm, basis [68, 3, Ki + Ke])`` of the 68 landmarks whose vertices are
  ``vertex_ids [68]`` (in iBUG-68 order, e.g. from
  :func:`dff_jax.face_model.model.landmark_vertex_ids_for_pose`); the mean includes the
  alignment model's ``landmark_offsets``."""
  return _gather_rows(alignment_model, vertex_ids, alignment_model.landmark_basis)


def fit_rows(alignment_model: AlignmentModel, vertex_ids: Array) -> Tuple[Array, Array]:
  """:func:`landmark_rows` with the basis in the shape fit's coordinates: ``(mean [68, 3] mm,
  basis [68, 3, M])`` (``M = Ki + Ke`` and the same rows without ``fit_basis``)."""
  basis = (alignment_model.landmark_basis if alignment_model.fit_basis is None
           else alignment_model.fit_basis)
  return _gather_rows(alignment_model, vertex_ids, basis)


def _gather_rows(alignment_model: AlignmentModel, vertex_ids: Array,
                 basis: Array) -> Tuple[Array, Array]:
  """The mean (with ``landmark_offsets``) and ``basis`` ``[R, 3, M]`` rows of the vertices
  ``vertex_ids [68]``."""
  rows = alignment_model.row_of_vertex[vertex_ids]
  return (alignment_model.landmark_mean[rows] + alignment_model.landmark_offsets, basis[rows])


def fit_precision(alignment_model: AlignmentModel) -> Array:
  """``[M]`` prior precisions of the shape fit's coordinates: the model's
  (:func:`dff_jax.alignment.fitting._prior_precision`) without ``fit_basis``, ones with it."""
  if alignment_model.fit_basis is None:
    return fitting._prior_precision(alignment_model.face_model)  # pylint: disable=protected-access
  return jnp.ones((alignment_model.fit_basis.shape[-1],), jnp.float32)


def fit_to_coefficients(alignment_model: AlignmentModel, z: Array) -> Array:
  """``[..., M]`` fit coordinates -> ``[..., Ki + Ke]`` coefficients (identity then
  expression)."""
  if alignment_model.fit_coefficients is None:
    return z
  return jnp.dot(z, alignment_model.fit_coefficients, precision=jax.lax.Precision.HIGHEST)


def _project_rows(alignment_model: AlignmentModel, pose: Array, rotation: Array,
                  vertex_ids: Array, mean: Array, basis: Array, coefficients: Array,
                  visibility_threshold: float) -> Tuple[Array, Array]:
  """Landmarks ``[N, 2]`` and visibility ``[N]`` of the rows ``(mean, basis)`` (see
  :func:`project_landmarks`)."""
  model = alignment_model.face_model
  points = mean + jnp.einsum("njk,k->nj", basis, coefficients, precision="highest")
  landmarks = geometry.weak_perspective_project(points, pose[0], rotation, pose[4:6])
  normal_z = geometry.rotate(alignment_model.normals[vertex_ids], rotation)[:, 2]
  on_silhouette = vertex_ids[:17] != model.landmark_vertex_ids[:17]
  facing = normal_z > visibility_threshold
  visible = facing.at[:17].set(facing[:17] | on_silhouette)
  return landmarks, visible.astype(jnp.float32)


def project_landmarks(alignment_model: AlignmentModel, pose: Array, shape_coefficients: Array,
                      expression_coefficients: Array,
                      visibility_threshold: float = 0.0) -> Tuple[Array, Array, Array]:
  """Projects the 68 landmark vertices of the current shape under the current pose.

  Args:
    alignment_model: model and normals.
    pose: ``[6]`` pose vector (crop frame).
    shape_coefficients: ``[Ki]``; expression_coefficients: ``[Ke]``.
    visibility_threshold: see :class:`CascadeConfig`.

  Returns:
    ``(landmarks_px [68, 2] crop pixels, visibility [68] float32 0/1, vertex_ids [68] int32)``.
  """
  model = alignment_model.face_model
  rotation = pose_rotation(pose)
  vertex_ids = face_model_lib.landmark_vertex_ids_for_pose(model, rotation)
  mean, basis = landmark_rows(alignment_model, vertex_ids)
  coefficients = jnp.concatenate([shape_coefficients, expression_coefficients])
  landmarks, visible = _project_rows(alignment_model, pose, rotation, vertex_ids, mean, basis,
                                     coefficients, visibility_threshold)
  return landmarks, visible, vertex_ids


def shape_normal_equations(alignment_model: AlignmentModel, mean: Array, basis: Array,
                           landmarks_px: Array, pose: Array, rotation: Array, weights: Array,
                           regularisation: float) -> Tuple[Array, Array]:
  """Step 4's linear system ``(J^T W J + lambda P) c = J^T W t`` on pre-gathered rows.

  Tikhonov-regularised linear least squares in model millimetres, the objective of
  :func:`dff_jax.alignment.fitting.fit_shape_linear`, for the vertex-major rows of
  :func:`fit_rows`: with all coefficients (no ``fit_basis``) the prior precision ``P`` is 1 for
  identity and ``1 / expression_std^2`` for expression, and the solution ``c`` is the
  coefficients; with ``fit_basis`` ``P = I`` and ``c`` is the fit coordinates ``z``
  (:func:`with_fit_modes`, :func:`fit_precision`).

  Args:
    alignment_model: model (for the prior).
    mean: ``[N, 3]``; basis: ``[N, 3, M]`` rows of the landmark vertices (:func:`fit_rows`).
    landmarks_px: ``[N, 2]`` target crop pixels.
    pose: ``[6]`` pose (scale and translation are read); rotation: ``[3, 3]`` its rotation.
    weights: ``[N]`` non-negative landmark weights.
    regularisation: lambda (mm^2).

  Returns:
    ``(matrix [M, M], rhs [M])`` float32 (``M = Ki + Ke`` without ``fit_basis``); the matrix is
    symmetric positive definite for ``regularisation > 0``.
  """
  highest = jax.lax.Precision.HIGHEST
  flip = jnp.array([1.0, -1.0], jnp.float32)
  projection = rotation[:2] * flip[:, None]  # [2, 3]: model mm -> image direction, unit scale.
  target = ((landmarks_px - pose[4:6]) / pose[0]
            - jnp.sum(mean[:, None, :] * projection[None], axis=-1))  # [N, 2]
  # The Jacobian [2N, K] as two rows of 3-term sums over contiguous [N, K] slices of the basis,
  # then one [K, 2N] x [2N, K] product: XLA:CPU runs a dot_general with a contraction of size 3,
  # or a broadcast-and-reduce over that axis, several times slower than these elementwise sums
  # (python -m experiments.benchmark --what=loop_profile times this part).
  axes = [basis[:, axis, :] for axis in range(3)]  # 3 x [N, K]
  jacobian = jnp.concatenate([
      projection[row, 0] * axes[0] + projection[row, 1] * axes[1] + projection[row, 2] * axes[2]
      for row in range(2)], axis=0)  # [2N, K], rows x of all points then y of all points
  row_weights = jnp.concatenate([weights, weights])
  weighted = jacobian * row_weights[:, None]
  matrix = jnp.dot(weighted.T, jacobian, precision=highest)
  matrix = matrix + jnp.diag(regularisation * fit_precision(alignment_model))
  rhs = jnp.dot(weighted.T, jnp.concatenate([target[:, 0], target[:, 1]]), precision=highest)
  return matrix, rhs


def solve_normal_equations(matrix: Array, rhs: Array) -> Array:
  """``[K, K]`` SPD matrix, ``[K]`` -> ``[K]``: Cholesky factorisation and two triangular
  solves."""
  return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(matrix), rhs)


def fit_shape_rows(alignment_model: AlignmentModel, mean: Array, basis: Array,
                   landmarks_px: Array, pose: Array, rotation: Array, weights: Array,
                   regularisation: float) -> Array:
  """Step 4: :func:`dff_jax.alignment.fitting.fit_shape_linear` on pre-gathered rows (same
  objective and solution): :func:`shape_normal_equations`, then
  :func:`solve_normal_equations`. Args as the first; returns ``[M]`` float32: the
  coefficients (identity then expression) without ``fit_basis``, else the fit coordinates
  (:func:`fit_to_coefficients`)."""
  return solve_normal_equations(*shape_normal_equations(
      alignment_model, mean, basis, landmarks_px, pose, rotation, weights, regularisation))


def stage_features(descriptor_map: Array, landmarks_px: Array, visibility: Array) -> Array:
  """The stage's feature vector ``f``.

  Args:
    descriptor_map: the crop's descriptor field (:mod:`dff_jax.descriptor_fields`): a dense
      map ``[H, W, D]`` float32 (read bilinearly) or a point field (its head is evaluated at
      the 68 points only).
    landmarks_px: ``[68, 2]`` crop pixels.
    visibility: ``[68]`` float32 0/1.

  Returns:
    ``[68 * D + 1]`` float32: the descriptors at the visible, in-crop landmarks (zeros
    elsewhere), flattened landmark-major, then a constant 1.
  """
  values, inside = descriptor_fields.query(descriptor_map, landmarks_px)
  values = values * (visibility * inside.astype(values.dtype))[:, None]
  return jnp.concatenate([values.reshape(-1), jnp.ones((1,), values.dtype)])


def initial_state(alignment_model: AlignmentModel, params: CascadeParams,
                  config: CascadeConfig) -> AlignmentState:
  """The starting estimate: mean shape at the mean training pose (crop frame)."""
  model = alignment_model.face_model
  shape = jnp.zeros((model.num_identity,), jnp.float32)
  expression = jnp.zeros((model.num_expression,), jnp.float32)
  landmarks, visibility, _ = project_landmarks(alignment_model, params.initial_pose, shape,
                                               expression, config.visibility_threshold)
  return AlignmentState(landmarks_px=landmarks, visibility=visibility, pose=params.initial_pose,
                        shape_coefficients=shape, expression_coefficients=expression)


def regress(stage: Tuple[Array, ...], state: AlignmentState,
            features: Array) -> Tuple[Array, Array]:
  """Step 3: the regressed landmarks ``[68, 2]`` and pose ``[6]`` of a stage.

  ``stage`` is one stage's ``(landmark_weights [F, 136], pose_weights [F, 6], pose_std [6])``,
  optionally followed by ``(hidden_weights [F, H], output_weights [H, 142])``: then
  ``gelu(features @ hidden_weights) @ output_weights`` adds its first 136 values to the landmark
  offsets and its last 6 to the pose offsets (:meth:`CascadeParams.stages`).
  """
  landmark_weights, pose_weights, pose_std = stage[:3]
  precision = jax.lax.Precision.HIGHEST
  landmark_step = jnp.dot(features, landmark_weights, precision=precision)
  pose_step = jnp.dot(features, pose_weights, precision=precision)
  if len(stage) == 5:
    hidden = jax.nn.gelu(jnp.dot(features, stage[3], precision=precision))
    extra = jnp.dot(hidden, stage[4], precision=precision)
    landmark_step = landmark_step + extra[:2 * NUM_LANDMARKS]
    pose_step = pose_step + extra[2 * NUM_LANDMARKS:]
  landmarks = state.landmarks_px + landmark_step.reshape(NUM_LANDMARKS, 2)
  pose = state.pose + pose_std * pose_step
  return landmarks, pose


def refit(alignment_model: AlignmentModel, landmarks_px: Array, pose: Array, weights: Array,
          config: CascadeConfig) -> AlignmentState:
  """Steps 4-5: shape fit to the regressed landmarks under the regressed pose, re-projection.

  The landmark vertices (jaw for this pose) and their basis rows are looked up once and serve
  both the fit and the re-projection (the pose, hence the contour choice, is the same), both in
  the fit's coordinates (:func:`fit_rows`).
  """
  model = alignment_model.face_model
  rotation = pose_rotation(pose)
  vertex_ids = face_model_lib.landmark_vertex_ids_for_pose(model, rotation)
  mean, basis = fit_rows(alignment_model, vertex_ids)
  fitted = fit_shape_rows(alignment_model, mean, basis, landmarks_px, pose, rotation,
                          weights, config.shape_regularisation)
  landmarks, visibility = _project_rows(alignment_model, pose, rotation, vertex_ids, mean, basis,
                                        fitted, config.visibility_threshold)
  coefficients = fit_to_coefficients(alignment_model, fitted)
  return AlignmentState(landmarks_px=landmarks, visibility=visibility, pose=pose,
                        shape_coefficients=coefficients[:model.num_identity],
                        expression_coefficients=coefficients[model.num_identity:])


def mirror_estimate(landmarks_px: Array, visibility: Array, pose: Array,
                    crop_size: int) -> Tuple[Array, Array, Array]:
  """An estimate on a left-right mirrored crop, read back in the crop itself.

  A crop mirrored about its vertical centre line maps crop point ``(x, y)`` to
  ``(crop_size - x, y)`` (pixel centres at ``j + 0.5``) and shows the face's mirror image. For a
  face model symmetric about its ``x = 0`` plane, the mirror image under pose
  ``(s, pitch, yaw, roll, tx, ty)`` is the face under ``(s, pitch, -yaw, -roll,
  crop_size - tx, ty)`` (``S R S`` with ``S = diag(-1, 1, 1)`` negates yaw and roll in any Euler
  order), and its landmark ``i`` is the face's landmark ``MIRROR_LANDMARKS[i]``. Its own inverse:
  it also maps an estimate on the crop to the mirrored crop.

  Args:
    landmarks_px: ``[..., 68, 2]`` crop pixels; visibility: ``[..., 68]``; pose: ``[..., 6]``.
    crop_size: crop side (pixels).

  Returns:
    ``(landmarks_px, visibility, pose)`` of the same shapes, in the unmirrored crop.
  """
  order = jnp.asarray(face_model_lib.MIRROR_LANDMARKS, jnp.int32)
  landmarks = landmarks_px[..., order, :]
  landmarks = jnp.stack([crop_size - landmarks[..., 0], landmarks[..., 1]], axis=-1)
  sign = jnp.array([1.0, 1.0, -1.0, -1.0, -1.0, 1.0], jnp.float32)
  offset = jnp.array([0.0, 0.0, 0.0, 0.0, float(crop_size), 0.0], jnp.float32)
  return landmarks, visibility[..., order], pose * sign + offset


def mirrored_regression(stage: Tuple[Array, ...], state: AlignmentState, mirrored_map: Array,
                        crop_size: int) -> Tuple[Array, Array, Array]:
  """Step 3 on the left-right mirrored crop, read back in the crop.

  ``state`` (crop frame) is mirrored into the mirrored crop (:func:`mirror_estimate`), the stage
  regresses there from ``mirrored_map`` (the mirrored crop's descriptor field) and its landmarks
  ``[68, 2]`` and pose ``[6]`` are mirrored back. Returns them and the features ``[F]`` the
  stage read on the mirrored crop.
  """
  landmarks, visibility, pose = mirror_estimate(state.landmarks_px, state.visibility, state.pose,
                                                crop_size)
  mirrored = state.replace(landmarks_px=landmarks, visibility=visibility, pose=pose)
  features = stage_features(mirrored_map, landmarks, visibility)
  landmarks, pose = regress(stage, mirrored, features)
  landmarks, _, pose = mirror_estimate(landmarks, visibility, pose, crop_size)
  return landmarks, pose, features


def apply_stage(alignment_model: AlignmentModel, stage: Tuple[Array, ...],
                state: AlignmentState, descriptor_map: Array, config: CascadeConfig,
                mirrored_map: Optional[Array] = None) -> Tuple[AlignmentState, Array]:
  """One cascade stage for one face (``stage`` as in :func:`regress`).

  With ``mirrored_map`` (the descriptor field of the crop mirrored left-right: test-time
  mirroring) the stage also regresses on the mirrored crop (:func:`mirrored_regression`) and
  steps 4-5 fit the mean of the two regressed landmark sets under the mean of the two poses.

  Returns ``(next_state, regressed_landmarks_px [68, 2])``.
  """
  next_state, landmarks, _, _ = stage_step(alignment_model, stage, state, descriptor_map, config,
                                           mirrored_map)
  return next_state, landmarks


def stage_step(alignment_model: AlignmentModel, stage: Tuple[Array, ...],
               state: AlignmentState, descriptor_map: Array, config: CascadeConfig,
               mirrored_map: Optional[Array] = None
               ) -> Tuple[AlignmentState, Array, Array, Optional[Array]]:
  """:func:`apply_stage` plus the features the stage read: ``(next_state, regressed_landmarks
  [68, 2], features [F], mirrored features [F] or None)`` (those of the mirrored crop with
  ``mirrored_map``)."""
  features = stage_features(descriptor_map, state.landmarks_px, state.visibility)
  landmarks, pose = regress(stage, state, features)
  mirrored_features = None
  if mirrored_map is not None:
    other_landmarks, other_pose, mirrored_features = mirrored_regression(
        stage, state, mirrored_map, config.crop_size)
    landmarks, pose = (landmarks + other_landmarks) / 2, (pose + other_pose) / 2
  return (refit(alignment_model, landmarks, pose, state.visibility, config), landmarks, features,
          mirrored_features)


def output_points(alignment_model: AlignmentModel, state: AlignmentState) -> Array:
  """``[..., 68, 2]`` crop pixels: where ``landmarks_px`` of a state are output, its landmarks
  moved by the output calibration projected under its pose (:func:`state_to_image`)."""
  return state.landmarks_px + projected_offsets(state.pose, alignment_model.output_offsets)


def refine_state(params: CascadeParams, state: AlignmentState, features: Array,
                 mirrored_features: Optional[Array] = None) -> AlignmentState:
  """The final state with the output refinement's step added to ``landmarks_px`` (unchanged
  without ``params.refine_weights``).

  The step is ``features @ refine_weights`` (``[F] @ [F, 136]``, x / y interleaved per
  landmark, crop pixels), ``features`` being those the last stage read (:func:`stage_step`: the
  descriptors at the landmarks it started from), so the refinement costs no descriptor query of
  its own. Pose, shape, visibility, hence ``landmarks_3d_px``, stay the face model's. With
  ``mirrored_features`` (test-time mirroring: the last stage's features on the mirrored crop)
  the step is the mean of the crop's and the mirrored crop's, the latter read back in the crop
  (:func:`mirror_estimate`: a step ``(dx, dy)`` of the mirror image's landmark ``i`` is
  ``(-dx, dy)`` of the face's landmark ``MIRROR_LANDMARKS[i]``).
  """
  if params.refine_weights is None:
    return state

  def step_of(values):
    step = jnp.dot(values, params.refine_weights, precision=jax.lax.Precision.HIGHEST)
    return step.reshape(NUM_LANDMARKS, 2)

  step = step_of(features)
  if mirrored_features is not None:
    other = step_of(mirrored_features)[jnp.asarray(face_model_lib.MIRROR_LANDMARKS, jnp.int32)]
    step = (step + other * jnp.array([-1.0, 1.0], jnp.float32)) / 2
  return state.replace(landmarks_px=state.landmarks_px + step)


def landmark_agreement(features: Array, template: Array) -> Tuple[Array, Array]:
  """How well the descriptors a stage read agree with a per-landmark template.

  Args:
    features: ``[68 * D + 1]`` a stage's features (:func:`stage_features`: unit-length
      descriptors at the landmarks it read, zero rows at the others, then a constant 1).
    template: ``[68, D]`` unit rows (:attr:`CascadeParams.descriptor_template`).

  Returns:
    ``(landmark_agreement [68], agreement [])`` float32: each read landmark's cosine with its
    template row (0 where none was read: a zero row), and their mean over the read landmarks
    (0 when none was).
  """
  template = jnp.asarray(template, jnp.float32)
  rows = features[:-1].reshape(NUM_LANDMARKS, template.shape[-1])
  read = (jnp.sum(rows * rows, axis=-1) > 0.5).astype(jnp.float32)  # unit rows vs zero rows
  cosine = jnp.sum(rows * template, axis=-1) * read
  return cosine, jnp.sum(cosine) / jnp.maximum(jnp.sum(read), 1.0)


def with_agreement(params: CascadeParams, state: AlignmentState,
                   features: Array) -> AlignmentState:
  """``state`` with :func:`landmark_agreement` of the last stage's ``features`` (unchanged
  without ``params.descriptor_template``)."""
  if params.descriptor_template is None:
    return state
  per_landmark, mean = landmark_agreement(features, params.descriptor_template)
  return state.replace(landmark_agreement=per_landmark, agreement=mean)


def run_cascade(alignment_model: AlignmentModel, params: CascadeParams, descriptor_map: Array,
                config: CascadeConfig, state: AlignmentState | None = None,
                remat: bool = False, mirrored_map: Optional[Array] = None
                ) -> Tuple[AlignmentState, AlignmentState]:
  """All K stages for one face as a ``lax.scan``.

  Args:
    alignment_model: model and normals.
    params: stacked stage regressors.
    descriptor_map: the face crop's descriptor field (a dense map ``[crop, crop, D]`` or an
      unbatched point field, :mod:`dff_jax.descriptor_fields`).
    config: static settings.
    state: the starting estimate (default :func:`initial_state`).
    remat: rematerialise each stage in the backward pass (``jax.checkpoint``), trading compute
      for memory when differentiating through the cascade.
    mirrored_map: the field of the crop mirrored left-right: every stage also regresses there
      (test-time mirroring, :func:`apply_stage`).

  Returns:
    ``(final_state, per_stage_states)``; the second has a leading ``[K]`` axis on every field.
    The final state's landmarks carry the output refinement when ``params`` has one
    (:func:`refine_state`, from the features the last stage read), and its agreement with the
    descriptor template when ``params`` has one (:func:`with_agreement`, the same features; on
    the crop itself when mirroring); the per-stage states never do.
  """
  final, per_stage, features, mirrored_features = run_stages(
      alignment_model, params, descriptor_map, config, state, remat, mirrored_map)
  final = refine_state(params, final, features, mirrored_features)
  return with_agreement(params, final, features), per_stage


def run_stages(alignment_model: AlignmentModel, params: CascadeParams, descriptor_map: Array,
               config: CascadeConfig, state: AlignmentState | None = None,
               remat: bool = False, mirrored_map: Optional[Array] = None
               ) -> Tuple[AlignmentState, AlignmentState, Array, Optional[Array]]:
  """The K stages of :func:`run_cascade` without the output refinement: ``(final_state,
  per_stage_states, features [F], mirrored_features [F] or None)``: the features are those the
  last stage read (what :func:`refine_state` and the refinement's fit read)."""
  if state is None:
    state = initial_state(alignment_model, params, config)
  feature_dim = params.landmark_weights.shape[1]
  zeros = jnp.zeros((feature_dim,), jnp.float32)

  def body(carry, stage):
    new_state, _, features, mirrored_features = stage_step(
        alignment_model, stage, carry[0], descriptor_map, config, mirrored_map)
    return (new_state, features, zeros if mirrored_features is None else mirrored_features), \
        new_state

  if remat:
    body = jax.checkpoint(body)
  (final, features, mirrored_features), per_stage = jax.lax.scan(
      body, (state, zeros, zeros), params.stages())
  return final, per_stage, features, None if mirrored_map is None else mirrored_features


# ----------------------------------------------------------------------------------------------
# Images in, results out
# ----------------------------------------------------------------------------------------------


@flax.struct.dataclass
class AlignmentResult:
  """Batched results in **image** pixels (a pytree).

  Attributes:
    landmarks_px: ``[B, 68, 2]`` float32 image points (x, y); the jaw (0-16) follows the
      silhouette of the turned face (300-W "visible outline" convention). The fitted model's
      landmarks, moved by the output calibration and, when the cascade has one, the output
      refinement (:func:`refine_state`).
    landmarks_3d_px: ``[B, 68, 2]`` float32 image points of the 68 fixed vertices of the 3D
      convention (``landmark_3d_vertex_ids``) of the fitted shape under the fitted pose, hidden
      ones included (AFLW2000-3D: the jaw on the jaw line, which a turned face shows from the
      side). The other 51 are the fitted model's vertices (moved by the landmark offsets) and
      differ from ``landmarks_px`` by the output calibration and refinement, which move only
      ``landmarks_px``.
    visibility: ``[B, 68]`` float32 0/1.
    pitch_rad, yaw_rad, roll_rad: ``[B]`` float32.
    scale: ``[B]`` float32 image pixels per mm.
    translation_px: ``[B, 2]`` image position of the model origin.
    shape_coefficients: ``[B, Ki]``; expression_coefficients: ``[B, Ke]``.
    crop_box: ``[B, 4]`` the square box the crop covers, image pixels.
    landmark_agreement: optional ``[B, 68]``; agreement: optional ``[B]`` (see
      :class:`AlignmentState`; ``None`` for a cascade without a descriptor template).
  """
  landmarks_px: Array
  landmarks_3d_px: Array
  visibility: Array
  pitch_rad: Array
  yaw_rad: Array
  roll_rad: Array
  scale: Array
  translation_px: Array
  shape_coefficients: Array
  expression_coefficients: Array
  crop_box: Array
  landmark_agreement: Optional[Array] = None
  agreement: Optional[Array] = None


def fixed_landmarks(alignment_model: AlignmentModel, pose: Array, shape_coefficients: Array,
                    expression_coefficients: Array) -> Array:
  """``[68, 2]`` the model's 68 fixed landmark vertices of the 3D convention
  (``landmark_3d_vertex_ids``: the jaw on the model's jaw line) of the given shape projected
  under ``pose [6]`` (same frame as the pose), hidden ones included."""
  model = alignment_model.face_model
  rotation = pose_rotation(pose)
  vertex_ids = jnp.asarray(model.landmark_3d_vertex_ids, jnp.int32)
  mean, basis = landmark_rows(alignment_model, vertex_ids)
  coefficients = jnp.concatenate([shape_coefficients, expression_coefficients])
  points = mean + jnp.einsum("njk,k->nj", basis, coefficients, precision="highest")
  return geometry.weak_perspective_project(points, pose[0], rotation, pose[4:6])


def model_labels_in_convention(alignment_model: AlignmentModel, landmarks_px: Array, pose: Array,
                               from_model: Array) -> Array:
  """Moves a render's labels into the cascade's landmark convention.

  A render's labels are the face model's own landmark vertices projected; the cascade's
  ``landmarks_px`` are those vertices moved by ``alignment_model.landmark_offsets`` and
  ``output_offsets``. This adds each landmark's two offsets
  projected under the view's pose (weak perspective, :mod:`dff_jax.geometry`) to the faces whose
  labels come from the model (``from_model``); other faces (annotated photos, whose points
  already are the annotators') are returned unchanged. Zero offsets change nothing.

  Args:
    alignment_model: the cascade's model and landmark offsets.
    landmarks_px: ``[..., 68, 2]`` float32 labels, image (or crop) pixels.
    pose: ``[..., 6]`` float32 ``(scale px/mm, pitch, yaw, roll, tx, ty)`` of the same frame.
    from_model: ``[...]`` bool, the labels are model vertices.

  Returns:
    ``[..., 68, 2]`` float32.
  """
  shift = projected_offsets(pose, alignment_model.landmark_offsets
                            + alignment_model.output_offsets)
  keep = jnp.asarray(from_model, bool)[..., None, None]
  return jnp.asarray(landmarks_px, jnp.float32) + jnp.where(keep, shift, 0.0)


def image_projection(pose: Array) -> Array:
  """``[..., 2, 3]`` float32 linear part of the weak perspective of ``pose [..., 6]``: model mm
  -> image pixels, ``s * diag(1, -1) * R[:2]`` (the image y flip of
  :func:`dff_jax.geometry.weak_perspective_project`)."""
  pose = jnp.asarray(pose, jnp.float32)
  flip = jnp.array([1.0, -1.0], jnp.float32)[:, None]
  return pose[..., 0, None, None] * pose_rotation(pose)[..., :2, :] * flip


def projected_offsets(pose: Array, offsets: Array) -> Array:
  """Image displacement ``[..., 68, 2]`` (pixels) of model-space offsets ``[68, 3]`` (mm) under
  ``pose [..., 6]`` (:func:`image_projection` of each offset)."""
  return jnp.einsum("...ij,lj->...li", image_projection(pose),
                    jnp.asarray(offsets, jnp.float32), precision="highest")


def state_to_image(state: AlignmentState, crop_box: Array, crop_size: int,
                   alignment_model: Optional[AlignmentModel] = None) -> AlignmentResult:
  """Maps a (batched) crop-frame state back to image pixels (``landmarks_3d_px`` needs the
  ``alignment_model``; without it they repeat ``landmarks_px``). ``landmarks_px`` are moved by the
  alignment model's ``output_offsets`` projected under the final pose."""
  if alignment_model is None:
    landmarks = geometry.crop_to_image(state.landmarks_px, crop_box, crop_size)
    landmarks_3d = landmarks
  else:
    landmarks = geometry.crop_to_image(output_points(alignment_model, state), crop_box,
                                       crop_size)
    fixed = fixed_landmarks
    for _ in range(state.pose.ndim - 1):
      fixed = jax.vmap(fixed, in_axes=(None, 0, 0, 0))
    landmarks_3d = geometry.crop_to_image(
        fixed(alignment_model, state.pose, state.shape_coefficients,
              state.expression_coefficients), crop_box, crop_size)
  px_per_crop = (crop_box[..., 2] - crop_box[..., 0]) / crop_size
  translation = geometry.crop_to_image(state.pose[..., None, 4:6], crop_box, crop_size)[..., 0, :]
  return AlignmentResult(
      landmarks_px=landmarks, landmarks_3d_px=landmarks_3d, visibility=state.visibility,
      pitch_rad=state.pose[..., 1],
      yaw_rad=state.pose[..., 2], roll_rad=state.pose[..., 3],
      scale=state.pose[..., 0] * px_per_crop, translation_px=translation,
      shape_coefficients=state.shape_coefficients,
      expression_coefficients=state.expression_coefficients, crop_box=crop_box,
      landmark_agreement=state.landmark_agreement, agreement=state.agreement)


def align_crops(alignment_model: AlignmentModel, params: CascadeParams, descriptor_maps: Array,
                config: CascadeConfig, remat: bool = False,
                mirrored_maps: Optional[Array] = None) -> AlignmentState:
  """The cascade over a batch of descriptor fields (leaves ``[B, ...]``: dense maps
  ``[B, crop, crop, D]`` or point fields), with the mirrored crops' fields if given; returns the
  final crop-frame states with a leading ``[B]`` axis (vmap of :func:`run_cascade`; a point
  field's shared head is read once for all faces, :func:`dff_jax.descriptor_fields.vmap_faces`)."""
  def one(descriptor_map, mirrored_map):
    return run_cascade(alignment_model, params, descriptor_map, config, remat=remat,
                       mirrored_map=mirrored_map)[0]
  return descriptor_fields.vmap_faces(one)(descriptor_maps, mirrored_maps)


# Crops per step of describe_and_align on a CPU (default_chunk).
CPU_CHUNK = 8


def default_chunk() -> int:
  """Crops described and aligned at a time when a caller gives ``chunk=None``:
  :data:`CPU_CHUNK` on a CPU backend, where a chunk's activations stay in the caches
  (:func:`map_in_chunks`), and 0 (the whole batch in one step) on GPU / TPU, whose throughput
  grows with the batch. Read from ``jax.default_backend()`` when the computation is traced."""
  return CPU_CHUNK if jax.default_backend() == "cpu" else 0


def map_in_chunks(fn: Callable[[Array], Any], xs: Array, chunk: Optional[int]) -> Any:
  """``fn(xs)`` run ``chunk`` items at a time (``lax.map``), results (any pytree with a leading
  batch axis) joined along the batch axis; the whole batch at once when ``chunk`` does not
  divide it (or is 0); ``None`` is :func:`default_chunk`.

  The encoder's activations for 8 crops of 128 x 128 stay in a CPU's caches, those of 64 do not:
  on the 2-core CPU the point encoder runs 402.6 crops/s at batch 8 and 291.2 at 64
  (``experiments/results/benchmark_encoder_point.json``). Same values.
  """
  if chunk is None:
    chunk = default_chunk()
  batch = xs.shape[0]
  if not chunk or chunk >= batch or batch % chunk:
    return fn(xs)
  chunked = jax.lax.map(fn, xs.reshape((batch // chunk, chunk) + xs.shape[1:]))
  return jax.tree_util.tree_map(lambda x: x.reshape((batch,) + x.shape[2:]), chunked)


def describe_and_align(describe: Callable[[Array], Any], alignment_model: AlignmentModel,
                       params: CascadeParams, crops: Array, config: CascadeConfig,
                       remat: bool = False, chunk: Optional[int] = None, mirror: bool = False
                       ) -> AlignmentState:
  """Descriptor fields and the cascade for a batch of crops, ``chunk`` crops at a time.

  Each chunk's fields are read by its cascade while they are still in cache: a point field holds
  the encoder's whole pyramid (about 2 MB per 128-px crop), so describing all 64 crops of a batch
  before the first stage reads them costs more in memory traffic than the cascade's smaller
  batches do (``python -m experiments.benchmark --what=stream`` measures both).

  Args:
    describe: crops ``[b, crop, crop, 3]`` float32 in [0, 255] -> descriptor fields with a
      leading ``[b]`` axis (see :func:`align_images`).
    alignment_model, params, config: as :func:`run_cascade`.
    crops: ``[B, crop, crop, 3]`` float32.
    remat: see :func:`run_cascade`.
    chunk: crops per step (:func:`map_in_chunks`; 0 = the whole batch at once; ``None``:
      :func:`default_chunk`, 8 on a CPU). Same values for any chunk.
    mirror: test-time mirroring: every crop is also described mirrored left-right and each
      stage regresses on both (:func:`apply_stage`); twice the descriptor work and the
      regressions (not the fits); the encoder then describes ``2 * chunk`` crops per step.

  Returns:
    the final crop-frame :class:`AlignmentState` with a leading ``[B]`` axis.
  """
  def run(part):
    return align_crops(alignment_model, params, describe(part), config, remat=remat)

  def run_mirrored(part):
    size = part.shape[0]
    fields = describe(jnp.concatenate([part, part[:, :, ::-1]], axis=0))
    own, mirrored = [jax.tree_util.tree_map(lambda x, k=k: x[k * size:(k + 1) * size], fields)
                     for k in range(2)]
    return align_crops(alignment_model, params, own, config, remat=remat, mirrored_maps=mirrored)

  return map_in_chunks(run_mirrored if mirror else run, crops, chunk)


def align_images(describe: Callable[[Array], Array], alignment_model: AlignmentModel,
                 params: CascadeParams, images: Array, boxes_xyxy: Array,
                 config: CascadeConfig, remat: bool = False, chunk: Optional[int] = None,
                 mirror: bool = False) -> AlignmentResult:
  """Images and face boxes in, landmarks / pose / shape in image pixels out.

  Jit this (``config`` and ``describe`` static); it is differentiable with respect to the
  images, whatever ``describe`` closes over, and ``params``.

  Args:
    describe: maps a batch of crops ``[B, crop, crop, 3]`` float32 in [0, 255] to descriptor
      fields with a leading ``[B]`` axis (:mod:`dff_jax.descriptor_fields`: dense maps
      ``[B, crop, crop, D]`` or point fields), e.g. the DFF encoder with its parameters, or
      dense SIFT.
    alignment_model: model and normals.
    params: cascade regressors.
    images: ``[B, H, W, 3]`` float32 or uint8 (a batch padded to one size).
    boxes_xyxy: ``[B, 4]`` face boxes ``(x0, y0, x1, y1)`` in image pixels.
    config: static settings.
    remat: see :func:`run_cascade`.
    chunk: crops described and aligned at a time (:func:`describe_and_align`).
    mirror: test-time mirroring (:func:`describe_and_align`).

  Returns:
    :class:`AlignmentResult` with a leading ``[B]`` axis.
  """
  crops, crop_boxes = crop_faces(images, boxes_xyxy, config)
  states = describe_and_align(describe, alignment_model, params, crops, config, remat, chunk,
                              mirror)
  return state_to_image(states, crop_boxes, config.crop_size, alignment_model)


def crop_faces(images: Array, boxes_xyxy: Array, config: CascadeConfig) -> Tuple[Array, Array]:
  """Each face's square crop box, resampled to the crop.

  Args:
    images: ``[B, H, W, 3]`` float32 or uint8 (one size for the batch).
    boxes_xyxy: ``[B, 4]`` face boxes ``(x0, y0, x1, y1)``, image pixels.
    config: ``box_scale`` and ``crop_size``.

  Returns:
    ``(crops [B, crop, crop, 3] float32 in the images' value range, crop_boxes [B, 4] float32)``:
    :func:`dff_jax.sampling.crop_image` of ``geometry.square_box(box, config.box_scale)``.
  """
  crop_boxes = geometry.square_box(jnp.asarray(boxes_xyxy, jnp.float32), config.box_scale)
  crops = jax.vmap(lambda image, box: sampling.crop_image(image, box, config.crop_size))(
      jnp.asarray(images, jnp.float32), crop_boxes)
  return crops, crop_boxes


def working_images_to_crops(work_images: Array, crop_size: int) -> Array:
  """``[B, S, S, C]`` -> ``[B, crop, crop, C]`` float32: each crop pixel the mean of its
  ``m x m`` block, ``S = m * crop_size``.

  For ``m = 2`` this is exactly :func:`dff_jax.sampling.crop_image` of the whole image (every crop
  pixel centre falls midway between 2 x 2 pixel centres, so bilinear reading is their mean),
  without the gathers; for ``m = 1`` the image itself.

  Raises:
    ValueError: ``S`` is not a multiple of ``crop_size``, or the images are not square.
  """
  batch, height, width = work_images.shape[:3]
  if height != width or height % crop_size:
    raise ValueError(f"working images must be square with a side that is a multiple of the crop "
                     f"size {crop_size}, got {height} x {width}")
  factor, channels = height // crop_size, work_images.shape[-1]
  # Explicit sums of slices: on XLA:CPU a reduce over the two block axes of a 6-D reshape (and
  # crop_image's bilinear gathers) ran tens of times slower (measured ad hoc while profiling).
  blocks = jnp.asarray(work_images, jnp.float32).reshape(
      batch, crop_size, factor, crop_size, factor * channels)
  rows = sum(blocks[:, :, a] for a in range(factor))  # [B, crop, crop, factor * C]
  summed = sum(rows[..., b * channels:(b + 1) * channels] for b in range(factor))
  return summed / float(factor * factor)


def align_working_images(describe: Callable[[Array], Array], alignment_model: AlignmentModel,
                         params: CascadeParams, work_images: Array, config: CascadeConfig,
                         remat: bool = False, chunk: Optional[int] = None,
                         mirror: bool = False) -> AlignmentResult:
  """:func:`align_images` for images that are already their face's crop box.

  The host cuts each face's crop box (``geometry.square_box(box, config.box_scale)``) out of its
  photo at ``m * crop_size`` pixels (:func:`dff_jax.alignment.runner.working_crop`, ``m = 2``);
  here each is reduced to the crop by :func:`working_images_to_crops` and aligned. Jit this
  (``config`` and ``describe`` static); differentiable as :func:`align_images`.

  Args:
    describe, alignment_model, params, config, remat, chunk, mirror: as :func:`align_images`.
    work_images: ``[B, S, S, 3]`` uint8 or float32 in [0, 255], ``S = m * crop_size``.

  Returns:
    :class:`AlignmentResult` with a leading ``[B]`` axis in working-image pixels (crop box
    ``[0, 0, S, S]``).
  """
  crops = working_images_to_crops(work_images, config.crop_size)
  side = float(work_images.shape[1])
  crop_boxes = jnp.broadcast_to(jnp.array([0.0, 0.0, side, side], jnp.float32),
                                (work_images.shape[0], 4))
  states = describe_and_align(describe, alignment_model, params, crops, config, remat, chunk,
                              mirror)
  return state_to_image(states, crop_boxes, config.crop_size, alignment_model)
