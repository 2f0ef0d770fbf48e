"""Importing this module registers :class:`FaceModel` as a JAX pytree (array fields are leaves,
``name`` / ``expression_names`` static metadata). JAX code passing a model through ``jit`` or
``vmap`` imports it; the NumPy side never does."""

from dff_jax.face_model.model import register_pytree

register_pytree()
