"""Domain rules of the messaging service. No gRPC, Mongo or NATS imports here."""
