"""The live agent: ports adapters, Kafka source, Kubernetes actuator, decision loop (see docs/architecture.md)."""
