"""One module per system under test; each runs as its own process and prints JSON results."""
