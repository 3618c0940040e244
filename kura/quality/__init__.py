"""Data-quality suites (great-expectations) run on shards before anything downstream may use them."""
