"""Checkpoints: the state format, files on disk, and when a shard writes them."""
