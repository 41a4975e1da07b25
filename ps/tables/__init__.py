"""Tables: specs, placement, dense and sparse storage, optimizers."""
