"""Domain rules of the open_platform service. No gRPC, Mongo or NATS imports here."""
