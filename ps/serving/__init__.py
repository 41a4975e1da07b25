"""Serving a shard: the one data handler, the gRPC server and service, the control calls, the data planes, faults."""
