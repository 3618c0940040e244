"""Packing token streams into Megatron indexed datasets."""
