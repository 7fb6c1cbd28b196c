"""Benchmarks: each prints a side-by-side table and a JSON line, and states its goal."""
