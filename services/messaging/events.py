"""Events the messaging service produces and consumes (NATS JetStream)."""
