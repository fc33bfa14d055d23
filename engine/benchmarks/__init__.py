"""Benchmarks behind ``landcover benchmark``: one module per kind (see commands/benchmark.py)."""
