"""Benchmarks: every figure is a ratio against raw httpx measured in the same run."""
