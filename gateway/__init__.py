"""The edge gateway: Matrix Client-Server API (compatible subset) + Laiwang extensions, over gRPC."""
