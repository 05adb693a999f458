"""Sample partner apps that use only Laiwang's public API (each runs as its own process)."""
