"""Benchmarks that hold the library against a baseline run in the same process (python -m bench)."""
