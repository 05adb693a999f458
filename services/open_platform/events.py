"""Events the open_platform service produces and consumes (NATS JetStream)."""
