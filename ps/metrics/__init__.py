"""Prometheus metrics of a shard."""
