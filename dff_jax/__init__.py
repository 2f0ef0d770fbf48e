"""dff-jax: Deep Face Feature for face alignment, in JAX/Flax.

Importing this package does not import JAX (the NumPy data pipeline shares its geometry and
face-model math); the JAX modules are imported by name, e.g. ``dff_jax.alignment``.
"""

__version__ = "0.1.0"
