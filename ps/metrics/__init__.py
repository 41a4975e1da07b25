"""Prometheus metrics of a shard, on prometheus-client (served by :mod:`ps.protocol.metrics_endpoint`)."""
