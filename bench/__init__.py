"""Benchmarks that print figures; run each as `python -m bench.<name>`. Results live in docs/benchmarks.md."""
