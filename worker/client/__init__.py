"""The Client and its parts: transport, registration, recovery, table directory, steps."""
