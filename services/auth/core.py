"""Domain rules of the auth service. No gRPC, Mongo or NATS imports here."""
