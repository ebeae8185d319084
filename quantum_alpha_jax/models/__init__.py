"""Flax models: the Temporal Fusion Transformer and the building blocks in ``layers``."""
