"""Benchmarks that ship with the package (``depth-bench``): backend parity, latency, the accuracy/latency frontier,
the roofline and ensembling."""
