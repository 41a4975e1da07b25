"""Serving a shard: the gRPC server and service, the control calls, the data planes, faults."""
