"""Observing a worker: metrics, slow-wait warnings, the observed client."""
