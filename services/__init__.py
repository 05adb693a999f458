"""The five Laiwang services; each owns its data and talks to the others only through protos and events."""
