"""The training loop, the sparse loop and the single-process reference trainer."""
