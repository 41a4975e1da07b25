"""One shard's state and logic without networking: the consistency gate, dedup, leases, and the Shard's parts."""
