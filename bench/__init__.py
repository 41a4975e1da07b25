"""Benchmarks of the parameter server against peers, in one run (see bench/README.md)."""
