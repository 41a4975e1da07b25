"""The worker's data planes: gRPC, same-host shared memory, TCP stream."""
