"""Artifacts (datasets, checkpoints, adapters) by key in the configured store, and the path gate."""
