"""Domain rules of the contacts service. No gRPC, Mongo or NATS imports here."""
