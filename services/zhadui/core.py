"""Domain rules of the zhadui service. No gRPC, Mongo or NATS imports here."""
