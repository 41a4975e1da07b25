"""Wire format, frames, auth and TLS: what servers and workers share on the wire."""
