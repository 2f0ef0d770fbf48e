"""The public API: :class:`Aligner` (load once, align any photos) and :func:`align_faces` (the
pure, differentiable core).

.. code-block:: python

  from dff_jax import Aligner
  from dff_jax.image_io import read_image

  aligner = Aligner.load()                                 # the shipped default cascade
  faces = aligner.align([read_image("photo.jpg")])[0]      # every face the detector finds
  for face in faces:
    print(face.score, face.box, face.pose.yaw_deg, face.landmarks_px.shape)   # (68, 2)

:meth:`Aligner.align` takes images of any sizes and optional boxes, finds the faces of images
without a box (:func:`dff_jax.detection.detect_faces`), cuts each face's crop on the host, runs
the jitted cascade on fixed-size batches (padded, compiled once per batch size) and returns per
image a list of :class:`dff_jax.alignment.results.Face`.

:func:`align_faces` is the same cascade as one pure function of ``(encoder_params,
cascade_params, images, boxes)``, for ``jax.grad`` / ``jax.jit`` / ``jax.vmap`` (README.md has a
worked gradient example). It crops inside the graph by bilinear sampling, while
:meth:`Aligner.align` resamples each crop on the host with Pillow's antialiasing filter: the two
agree exactly when the face's square crop box is pixel-aligned and ``2 * crop_size`` pixels wide
(see :mod:`dff_jax.alignment.runner`), and closely otherwise unless the face is much larger than
the crop.

Frames (DESIGN.md section 3): boxes ``(x0, y0, x1, y1)`` and points ``(x, y)`` in image pixels,
x right, y down, pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``; a face box is the bounding
box of the face's 68 landmarks (brows to chin), the detector's boxes are corrected to it.
"""

from __future__ import annotations

import os
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from dff_jax.alignment import cascade as cascade_lib
from dff_jax.alignment import runner
from dff_jax.alignment import streaming
from dff_jax.alignment.results import Face, Pose  # noqa: F401  (public names)

Array = Any
DETECT = runner.DETECT
WHOLE_IMAGE = runner.WHOLE_IMAGE


class Aligner:
  """A loaded alignment cascade with its descriptor, face model and face detector.

  Make one with :meth:`load`; :meth:`align` aligns lists of images. The parameters
  (:attr:`encoder_params`, :attr:`cascade_params`) and :func:`align_faces` give the pure
  function for differentiation.

  Args:
    cascade: a :class:`dff_jax.alignment.runner.CompiledCascade` (from
      :func:`dff_jax.alignment.runner.load_aligner`).
    batch_size: the most faces per jitted call (smaller sets run at the smallest power of two
      that holds them; each size compiles once, 1-3 s).
    detect: ``image -> (boxes [N, 4], scores [N])`` for images without a box (default:
      :func:`dff_jax.detection.detect_faces` with ``min_score`` and ``upsample``).
    min_score, upsample: the detector's settings (see :func:`dff_jax.detection.detect_faces`).
    refine: the most extra passes for each face found by the detector or given by a
      detector's box (:meth:`align`'s ``box_convention``), each from the bounding box of the
      previous pass's ``landmarks_px``, until that crop stops moving
      (:data:`dff_jax.alignment.streaming.REFINE_DETECTED`,
      :data:`~dff_jax.alignment.streaming.REFINE_MIN_CHANGE`; 0: align once from the box).
  """

  def __init__(self, cascade: runner.CompiledCascade, batch_size: int = 8,
               detect: Optional[Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]] = None,
               min_score: Optional[float] = None, upsample: int = 1,
               refine: int = streaming.REFINE_DETECTED):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if refine < 0:
      raise ValueError(f"refine must be >= 0, got {refine}")
    if min_score is not None and not 0.0 < float(min_score) <= 1.0:  # NaN fails too
      raise ValueError(f"min_score must be a detector score in (0, 1], got {min_score!r} "
                       "(None: the detector's default)")
    if upsample not in (1, 2):
      raise ValueError(f"upsample must be 1 (the whole image) or 2 (also 3 x 3 tiles, for small "
                       f"faces), got {upsample!r}")
    self.cascade = cascade
    self.batch_size = int(batch_size)
    self.refine = int(refine)
    if detect is None:
      from dff_jax import detection  # pylint: disable=g-import-not-at-top
      score = detection.MIN_SCORE if min_score is None else float(min_score)

      def detect(image):
        return detection.detect_faces(image, min_score=score, upsample=upsample)
    self._detect = detect

  @classmethod
  def load(cls, cascade: Optional[str | os.PathLike] = None,
           checkpoint: Optional[str | os.PathLike] = None, face_model: Optional[str] = None,
           features: Optional[str] = None, batch_size: int = 8,
           min_score: Optional[float] = None, upsample: int = 1,
           refine: int = streaming.REFINE_DETECTED, mirror: bool = False,
           matmul_dtype: Optional[str] = None) -> "Aligner":
    """Loads a cascade, its descriptor and its face model (cached: loading the same files
    again reuses the compiled cascade).

    Args:
      cascade: a shipped cascade by name (``"default"``, ``"synthetic"``, ``"fast"``:
        :data:`dff_jax.alignment.runner.NAMED_CASCADES`), a cascade ``.npz`` path, or ``None``
        for the shipped default.
      checkpoint: the DFF encoder bundle / training workdir; ``None`` = the one the cascade
        names.
      face_model: ``"default"``, ``"ict"``, ``"sfm"`` or a face-model file; ``None`` = the
        cascade's.
      features: ``"dff"`` / ``"sift"``; ``None`` = the cascade's.
      batch_size, min_score, upsample, refine: see :class:`Aligner`.
      mirror: test-time mirroring: each face is also aligned mirrored left-right and every
        cascade stage averages the two regressions (more accurate on photos, about twice the
        alignment time; :func:`dff_jax.alignment.cascade.apply_stage`).
      matmul_dtype: ``"bfloat16"``: the DFF encoder's matrix products (3x3 convolutions and
        the point head) with bfloat16 operands, accumulated in float32: faster on CPUs with
        bfloat16 matrix units (Intel AMX) and on TPUs; ``None``: the encoder's own (float32).

    Raises:
      FileNotFoundError / ValueError: a missing or unreadable file (one-line message).
    """
    spec = runner.resolve_aligner(cascade, features, checkpoint, face_model, mirror=mirror,
                                  matmul_dtype=matmul_dtype)
    return cls(runner.load_aligner(spec), batch_size=batch_size, min_score=min_score,
               upsample=upsample, refine=refine)

  # --- what was loaded -------------------------------------------------------------------------

  @property
  def features(self) -> str:
    """``"dff"`` or ``"sift"``."""
    return self.cascade.spec.features

  @property
  def face_model(self):
    """The 3DMM (:class:`dff_jax.face_model.model.FaceModel`, NumPy arrays, millimetres)."""
    return self.cascade.face_model

  @property
  def config(self) -> cascade_lib.CascadeConfig:
    """The cascade's static settings (stages, crop size, box scale, ...)."""
    return self.cascade.config

  @property
  def min_agreement(self) -> Optional[float]:
    """A face whose ``agreement`` is below this may be no face (a box on something else); the
    cascade's threshold (:mod:`dff_jax.alignment.agreement`), ``None`` without a template."""
    return self.cascade.min_agreement

  @property
  def encoder_params(self) -> Any:
    """The DFF encoder's parameter pytree (``None`` for SIFT): the first argument of
    :func:`align_faces`."""
    return self.cascade.describer.params

  @property
  def cascade_params(self) -> cascade_lib.CascadeParams:
    """The stacked stage regressors (a pytree): the second argument of :func:`align_faces`."""
    return self.cascade.params

  def __repr__(self) -> str:
    spec = self.cascade.spec
    return (f"Aligner(cascade={str(spec.cascade_path)!r}, features={spec.features!r}, "
            f"encoder={str(spec.checkpoint) if spec.checkpoint else None!r}, "
            f"face_model={self.face_model.name!r}, batch_size={self.batch_size})")

  # --- aligning ---------------------------------------------------------------------------------

  def detect(self, image: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The face boxes :meth:`align` uses for ``image`` without a box: ``(boxes [N, 4] float32,
    scores [N] float32)``, best first (:func:`dff_jax.detection.detect_faces`)."""
    boxes, scores = self._detect(image)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32)

  def align(self, images: Sequence[np.ndarray] | np.ndarray,
            boxes: Optional[Sequence[Any]] = None,
            box_convention: str = "detector") -> List[List[Face]]:
    """Aligns every face of every image.

    Args:
      images: a list of ``[H, W, 3]`` uint8 RGB arrays, any sizes (``[B, H, W, 3]`` and a
        single ``[H, W, 3]`` array work too; grey ``[H, W]`` / ``[H, W, 1]`` and RGBA
        ``[H, W, 4]`` uint8 arrays are converted as :func:`dff_jax.image_io.as_rgb` says);
        :func:`dff_jax.image_io.read_image` reads files.
      boxes: ``None`` (find the faces of every image), or one entry per image: ``None`` /
        ``"detect"`` (find its faces), ``[x0, y0, x1, y1]`` (one face), ``[[x0, y0, x1, y1],
        ...]`` (several; ``[]`` none) or ``"whole"`` (the whole image is the face crop).
      box_convention: what the given boxes are: ``"detector"`` (any face detector's box, e.g.
        dlib's: each face is aligned, then up to ``refine`` more times from the box of its own
        landmarks until that crop stops moving, as a detected face) or ``"landmarks"`` (the
        bounding box of the face's 68 landmarks, the evaluation protocol of 300-W and
        AFLW2000-3D: aligned once, faster and a little more accurate from such a box;
        WORKSPACE.md section 14).

    Returns:
      Per image, a list of :class:`dff_jax.alignment.results.Face` (``landmarks_px``,
      ``landmarks_3d_px``, ``visibility``, ``pose``, ``shape_coefficients``,
      ``expression_coefficients``, ``box``, ``score``, ``crop_box``, ``agreement``,
      ``landmark_agreement``), in box order (detections best first; ``score`` is ``None`` for
      given boxes), ``[]`` when none was found. A face whose ``agreement`` is below
      :attr:`min_agreement` may be no face (a box on something else).

    Raises:
      ValueError: a bad image or box (the message names the image's index), or a diverged
        (non-finite) alignment.
    """
    images = _as_image_list(images)
    streaming.check_box_convention(box_convention)
    if boxes is None:
      boxes = [None] * len(images)
    elif isinstance(boxes, str):
      raise ValueError(f"boxes={boxes!r}: boxes holds one entry per image; pass "
                       f"[{boxes!r}] * {len(images)}")
    else:
      try:
        boxes = list(boxes)
      except TypeError:
        raise ValueError(f"boxes must be a list with one entry per image, got "
                         f"{type(boxes).__name__}") from None
      if len(boxes) != len(images):
        one_box = (len(boxes) == 4 and len(images) != 4
                   and all(isinstance(v, (int, float, np.number)) for v in boxes))
        hint = (": for one box per image wrap it, boxes=[[x0, y0, x1, y1]]" if one_box
                else " (None to find its faces)")
        raise ValueError(f"got {len(boxes)} box entries for {len(images)} images: give one per "
                         f"image{hint}")
    prepared = []  # (image, boxes [N, 4], scores, refinement passes) per image
    for index, (image, box) in enumerate(zip(images, boxes)):
      where = f"image {index}"
      found, scores = runner.face_boxes(image, box, self.config.box_scale, where,
                                        detect=self._detect)  # detection happens here
      passes = streaming.given_box_passes(box, box_convention, self.refine)
      prepared.append((image, found, scores, self.refine if passes is None else passes))
    total = sum(len(found) for _, found, _, _ in prepared)
    out: List[List[Face]] = [[] for _ in images]
    if not total:
      return out
    batch_size = min(self.batch_size, 1 << (total - 1).bit_length())
    jobs = [streaming.Job(name=f"image {index}",
                          load=lambda image=image, found=found, scores=scores, passes=passes: (
                              streaming.Loaded(image=image, box=found, scores=scores,
                                               refine=passes)))
            for index, (image, found, scores, passes) in enumerate(prepared) if len(found)]
    for outcome in streaming.run_jobs(self.cascade, jobs, batch_size=batch_size, progress=False,
                                      keep_loaded=False, workers=0):
      if outcome.error is not None:
        raise ValueError(outcome.error)
      out[int(outcome.job.name.split()[-1])] = outcome.faces
    return out


def _as_image_list(images: Any) -> List[np.ndarray]:
  """``images`` as a list of checked ``[H, W, 3]`` uint8 RGB arrays: a list of images, one
  image (``[H, W]``, or ``[H, W, C]`` with ``C`` 1, 3 or 4) or a ``[B, H, W, C]`` batch; grey
  and RGBA images are converted (:func:`dff_jax.image_io.as_rgb`)."""
  from dff_jax import detection  # pylint: disable=g-import-not-at-top
  if isinstance(images, np.ndarray):
    if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (1, 3, 4)):
      images = [images]
    elif images.ndim == 4:
      images = list(images)
    else:
      raise ValueError(f"expected a list of [H, W, 3] uint8 images, got an array of shape "
                       f"{images.shape}")
  out = []
  for index, image in enumerate(images):
    try:
      out.append(detection.check_image(image))
    except ValueError as error:
      raise ValueError(f"image {index}: {error}") from None
  return out


def _check_align_inputs(encoder_params: Any, images: Array, boxes: Array, aligner: Any) -> None:
  """:func:`align_faces`' argument checks (one-line ``ValueError``s saying what to pass)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  shape, box_shape = tuple(np.shape(images)), tuple(np.shape(boxes))
  if len(shape) != 4 or shape[-1] not in (1, 3):
    raise ValueError(f"align_faces: images must be [B, H, W, 3] (or [B, H, W, 1] grey), one size "
                     f"per batch, got shape {shape}; add the batch axis with images[None], "
                     "drop an alpha channel")
  if box_shape != (shape[0], 4):
    raise ValueError(f"align_faces: boxes must be [B, 4] = [{shape[0]}, 4] (one (x0, y0, x1, y1) "
                     f"per image), got shape {box_shape}")
  if aligner.cascade.describer.kind == "dff" and encoder_params is None:
    raise ValueError("align_faces: encoder_params is None: pass aligner.encoder_params (or "
                     "your own parameters of that encoder)")
  concrete = lambda x: not isinstance(x, jax.core.Tracer)
  if concrete(boxes) and not np.all(np.isfinite(np.asarray(boxes))):
    raise ValueError("align_faces: boxes hold NaN or infinite values")
  if concrete(images):
    values = np.asarray(images)
    if np.issubdtype(values.dtype, np.floating):
      if not np.all(np.isfinite(values)):
        raise ValueError("align_faces: images hold NaN or infinite pixels")
      if values.size and 0.0 < float(values.max()) <= 1.0 and float(values.min()) >= 0.0:
        raise ValueError("align_faces: the images look scaled to [0, 1] (max "
                         f"{float(values.max()):.3g}): pass pixel values in [0, 255]")


def align_faces(encoder_params: Any, cascade_params: cascade_lib.CascadeParams, images: Array,
                boxes: Array, *, aligner: Aligner, remat: bool = False
                ) -> cascade_lib.AlignmentResult:
  """The alignment as one pure function: images and face boxes in, results out.

  Differentiable with respect to ``encoder_params``, ``cascade_params`` and ``images``; jit it
  with ``jax.jit(align_faces, static_argnames=("aligner", "remat"))`` or close over the aligner.
  ``aligner`` supplies only static things (the encoder's architecture, the face model, the
  cascade settings, its test-time mirroring), never the parameters.

  Args:
    encoder_params: the DFF encoder's parameters (:attr:`Aligner.encoder_params`; ``None``
      for SIFT).
    cascade_params: the stage regressors (:attr:`Aligner.cascade_params`).
    images: ``[B, H, W, 3]`` float32 in [0, 255] or uint8, one size for the batch.
    boxes: ``[B, 4]`` float32 face boxes ``(x0, y0, x1, y1)``, image pixels (e.g. from
      :meth:`Aligner.detect`).
    aligner: the loaded :class:`Aligner`.
    remat: rematerialise each cascade stage in the backward pass (less memory).

  Returns:
    :class:`dff_jax.alignment.cascade.AlignmentResult` with a leading ``[B]`` axis:
    ``landmarks_px`` / ``landmarks_3d_px`` ``[B, 68, 2]``, ``visibility [B, 68]``,
    ``yaw_rad``, ``pitch_rad``, ``roll_rad``, ``scale`` ``[B]``, ``translation_px [B, 2]``,
    ``shape_coefficients [B, Ki]``, ``expression_coefficients [B, Ke]``, ``crop_box [B, 4]``.

  Raises:
    ValueError: shapes other than the above (checked under ``jit`` too: shapes are static),
      missing encoder parameters, and for concrete (not traced) inputs NaN / infinite boxes or
      pixels and float images that look scaled to [0, 1].
  """
  _check_align_inputs(encoder_params, images, boxes, aligner)
  describer = aligner.cascade.describer
  return cascade_lib.align_images(lambda crops: describer.apply(encoder_params, crops),
                                  aligner.cascade.alignment_model, cascade_params, images, boxes,
                                  aligner.config, remat=remat, mirror=aligner.cascade.spec.mirror)
