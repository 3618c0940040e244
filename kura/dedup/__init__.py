"""Deduplication across shards."""
