"""Benchmarks: every figure is a ratio against raw httpx measured in the same run."""

#: every suite, in the order a full run takes them (``benchmarks/bench_<name>.py``)
SUITE_NAMES = ("cache", "layers", "metrics", "wats", "reliability", "service", "offline", "fleet")
