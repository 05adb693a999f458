"""The open_platform service."""
