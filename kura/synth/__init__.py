"""Synthetic data: recipes (prompt template + parser + validator), generator backends and the teacher model."""
