"""Shared plumbing for every Laiwang process: configuration, logging, gRPC, NATS, MongoDB, supervision.

Nothing in here knows about a particular service's domain; services depend on it, never the reverse.
"""
