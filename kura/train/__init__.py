"""Training: model configs, the local CPU trainer and checkpoint folders."""
