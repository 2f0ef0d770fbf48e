"""Synthetic multi-view face correspondence data, NumPy only (never imports JAX).

Entry points: :class:`data_pipeline.pairs.PairSource` (random access, grain-ready),
:class:`data_pipeline.config.PipelineConfig`, :mod:`data_pipeline.shards` (writer / reader),
``python -m data_pipeline.validate`` (independent correctness check).
"""
