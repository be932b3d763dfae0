"""Benchmarks that print the tables quoted in the README; expensive results are cached in ``results/``."""
