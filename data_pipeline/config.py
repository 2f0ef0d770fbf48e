"""Configuration of the synthetic multi-view correspondence pipeline.

A frozen dataclass with defaults and validation: every field is checked in ``__post_init__`` and a
bad value raises a ``ValueError`` that says what is wrong and what to do. Angles are in degrees
here (configs and logs); the pipeline converts to radians.

``pipeline_config_from_dict`` builds one from a plain dict / ``ml_collections.ConfigDict`` (e.g.
``config.data`` of an experiment config); unknown keys are an error, not silently ignored.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Tuple

KNOWN_FACE_MODELS = ("default", "ict", "sfm")
YAW_DISTRIBUTIONS = ("uniform", "normal")
LIGHTING_MODELS = ("directional", "spherical_harmonics")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Synthetic pair generation settings.

  Attributes:
    seed: base seed; sample ``i`` uses ``np.random.default_rng((seed, i))``.
    num_examples: ``len(PairSource)`` (the source is random access over ``[0, num_examples)``).
    image_size: ``H == W`` in pixels, in ``[32, 512]``.
    num_views: ``V >= 2`` views of one face per sample (views 0 and 1 give ``points_a/b_px``).
    num_correspondences: ``K >= 1`` sampled surface points per sample.
    face_model: ``"default"`` (embedded ICT-derived model), ``"ict"``, ``"sfm"`` or a path to a
      model file readable by ``dff_jax.face_model.load_face_model``.
    max_identity_modes: use at most this many identity modes (speed; the first modes hold most of
      the variance); 0 = all.
    render_max_triangles: render a decimated mesh of about this many triangles over a subset
      of the model's own vertices (speed: at 128 px most of the 32k ICT triangles are sub-pixel);
      0 = the full mesh. Correspondences are exact on the rendered surface; ``triangle_ids`` and
      ``points_triangle_ids`` index ``data_pipeline.params.render_triangles(config)``.
    identity_std: multiplier on the N(0, 1) identity coefficients.
    expression_scale: multiplier on the sampled expression coefficients.
    jaw_open_probability: probability that the mouth opens (``jawOpen`` of ICT-like models).
    yaw_distribution: ``"uniform"`` in ``[-max_yaw_deg, max_yaw_deg]`` or ``"normal"`` with
      ``yaw_std_deg`` clipped to that range.
    max_yaw_deg, yaw_std_deg: yaw range / spread in degrees (``max_yaw_deg <= 90``).
    max_pitch_deg, max_roll_deg: uniform ranges of pitch and roll in degrees.
    face_size_range: ``(lo, hi)`` outer-eye-corner distance as a fraction of the image side
      (sets the weak-perspective scale).
    translation_jitter: face-centre translation jitter as a fraction of the image side.
    lighting: ``"directional"`` (ambient + one directional light with cast shadows) or
      ``"spherical_harmonics"`` (2nd order SH ambient + directional).
    shadows: cast shadows from the face's own shape (a light-view depth map).
    specular: strength of a Blinn-Phong highlight.
    background: ``"random"`` (textured: noise, gradients, stripes, blobs) or ``"flat"``.
    occluder_probability: probability of a random occluding shape per view (drawn over the
      image; affects the image only, the geometry maps stay those of the face).
    colour_jitter, blur_probability, noise_std: photometric augmentation strengths
      (noise in uint8 levels).
    depth_tolerance_mm: a surface point is visible if no surface lies more than this in front of
      it (camera mm).
    landmark_depth_tolerance_mm: the same for landmark visibility (looser: contour points sit on
      the silhouette).
  """

  seed: int = 0
  num_examples: int = 1_000_000
  image_size: int = 128
  num_views: int = 2
  num_correspondences: int = 256
  face_model: str = "default"
  max_identity_modes: int = 40
  render_max_triangles: int = 10000
  identity_std: float = 1.0
  expression_scale: float = 1.0
  jaw_open_probability: float = 0.3
  yaw_distribution: str = "uniform"
  max_yaw_deg: float = 90.0
  yaw_std_deg: float = 45.0
  max_pitch_deg: float = 25.0
  max_roll_deg: float = 20.0
  face_size_range: Tuple[float, float] = (0.24, 0.40)
  translation_jitter: float = 0.06
  lighting: str = "directional"
  shadows: bool = True
  specular: float = 0.15
  background: str = "random"
  occluder_probability: float = 0.15
  colour_jitter: float = 0.15
  blur_probability: float = 0.3
  noise_std: float = 3.0
  depth_tolerance_mm: float = 0.05
  landmark_depth_tolerance_mm: float = 1.0

  def __post_init__(self):
    validate_config(self)

  def replace(self, **changes) -> "PipelineConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["face_size_range"] = list(d["face_size_range"])
    return d


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


def validate_config(config: PipelineConfig) -> None:
  """Raises ``ValueError`` naming the first bad field of ``config``."""
  c = config
  _check(isinstance(c.image_size, int) and c.image_size > 0,
         f"image_size must be a positive int, got {c.image_size!r}")
  _check(32 <= c.image_size <= 512,
         f"image_size must be in [32, 512] pixels, got {c.image_size}")
  _check(isinstance(c.num_views, int) and c.num_views >= 2,
         f"num_views must be an int >= 2 (a sample is a group of views), got {c.num_views!r}")
  _check(isinstance(c.num_correspondences, int) and c.num_correspondences >= 1,
         f"num_correspondences (K) must be an int >= 1, got {c.num_correspondences!r}")
  _check(isinstance(c.num_examples, int) and c.num_examples >= 1,
         f"num_examples must be an int >= 1, got {c.num_examples!r}")
  _check(isinstance(c.seed, int) and c.seed >= 0, f"seed must be an int >= 0, got {c.seed!r}")
  fm = str(c.face_model)
  _check(fm in KNOWN_FACE_MODELS or Path(fm).suffix in (".npz", ".mat") and Path(fm).exists(),
         f"unknown face_model {fm!r}: use one of {KNOWN_FACE_MODELS} or the path of an existing "
         ".npz / .mat model file")
  _check(isinstance(c.render_max_triangles, int) and c.render_max_triangles >= 0,
         f"render_max_triangles must be an int >= 0 (0 = full mesh), got {c.render_max_triangles!r}")
  _check(c.max_identity_modes >= 0, f"max_identity_modes must be >= 0, got {c.max_identity_modes}")
  _check(c.yaw_distribution in YAW_DISTRIBUTIONS,
         f"yaw_distribution must be one of {YAW_DISTRIBUTIONS}, got {c.yaw_distribution!r}")
  _check(0.0 <= c.max_yaw_deg <= 90.0, f"max_yaw_deg must be in [0, 90], got {c.max_yaw_deg}")
  _check(c.yaw_std_deg > 0, f"yaw_std_deg must be > 0, got {c.yaw_std_deg}")
  _check(0.0 <= c.max_pitch_deg <= 90.0, f"max_pitch_deg must be in [0, 90], got {c.max_pitch_deg}")
  _check(0.0 <= c.max_roll_deg <= 180.0, f"max_roll_deg must be in [0, 180], got {c.max_roll_deg}")
  lo, hi = c.face_size_range
  _check(0.0 < lo <= hi <= 1.0,
         f"face_size_range must satisfy 0 < lo <= hi <= 1, got {c.face_size_range}")
  _check(0.0 <= c.translation_jitter <= 0.5,
         f"translation_jitter must be in [0, 0.5], got {c.translation_jitter}")
  _check(c.lighting in LIGHTING_MODELS,
         f"lighting must be one of {LIGHTING_MODELS}, got {c.lighting!r}")
  _check(c.background in ("random", "flat"),
         f"background must be 'random' or 'flat', got {c.background!r}")
  for name in ("jaw_open_probability", "occluder_probability", "blur_probability"):
    value = getattr(c, name)
    _check(0.0 <= value <= 1.0, f"{name} must be a probability in [0, 1], got {value}")
  for name in ("identity_std", "expression_scale", "specular", "colour_jitter", "noise_std",
               "depth_tolerance_mm", "landmark_depth_tolerance_mm"):
    value = getattr(c, name)
    _check(value >= 0.0, f"{name} must be >= 0, got {value}")


def pipeline_config_from_dict(values: Mapping[str, Any] | None = None, **overrides) -> PipelineConfig:
  """Builds a validated :class:`PipelineConfig` from a dict / ConfigDict plus keyword overrides.

  Raises:
    ValueError: for an unknown key (with the list of known ones) or a bad value.
  """
  merged = dict(values.items() if values is not None else ())
  merged.update(overrides)
  known = {f.name for f in dataclasses.fields(PipelineConfig)}
  unknown = sorted(set(merged) - known)
  if unknown:
    raise ValueError(f"unknown pipeline config keys {unknown}; known keys: {sorted(known)}")
  if "face_size_range" in merged:
    merged["face_size_range"] = tuple(float(x) for x in merged["face_size_range"])
  return PipelineConfig(**merged)
