"""Events the auth service produces and consumes (NATS JetStream)."""
