"""Benchmarks that print figures: training and model formats (``offline``), and HTTP serving (``serve``).

Targets are reported, never asserted: a noisy machine must not fail CI.
"""

from mindtrace.bench.offline import bench_model_formats, bench_train

__all__ = ["bench_model_formats", "bench_train"]
