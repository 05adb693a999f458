"""Benchmarks. Each `bench/<area>_bench.py` starts real processes and prints figures from one run."""
