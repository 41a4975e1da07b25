"""Wire format, frames, auth, TLS and the metrics endpoint: what servers and workers share on the wire."""
