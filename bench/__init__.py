"""Benchmarks: each prints one JSON line; run them with ``streamrec bench <name>``."""
