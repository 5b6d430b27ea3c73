"""modelwatch's services: configuration, the Kafka layer, the local broker, serving and the registry."""
