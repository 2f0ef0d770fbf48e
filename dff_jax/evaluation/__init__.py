"""Evaluation logic of the library (called by thin ``experiments/`` mains)."""
