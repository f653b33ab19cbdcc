"""Benchmarks that ship with the package (``depth-bench``): backend parity now; latency and the frontier to come."""
