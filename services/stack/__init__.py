"""The local stack: one Kafka broker, the four services as processes, and a demo stream."""
