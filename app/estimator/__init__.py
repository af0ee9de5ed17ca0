"""The estimator: exact LoRA parameter counts, adapter size, memory and run length. Pure domain code:
the standard library and pydantic only, no web, database or ML imports."""
