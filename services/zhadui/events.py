"""Events the zhadui service produces and consumes (NATS JetStream)."""
