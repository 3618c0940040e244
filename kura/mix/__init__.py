"""Data mixes: a YAML spec of sources × weights, validated, and resolved to concrete documents and tokens."""
