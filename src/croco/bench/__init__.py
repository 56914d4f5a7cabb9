"""Benchmark scripts (``python -m croco.bench.<name>``) that print throughput numbers and log them to docs/."""
