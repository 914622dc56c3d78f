"""python -m xdev.bench (being written)."""
