"""Benchmarks: ratios against a baseline interleaved in the same process (python -m benchmarks.NAME)."""
