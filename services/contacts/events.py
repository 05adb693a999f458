"""Events the contacts service produces and consumes (NATS JetStream)."""
