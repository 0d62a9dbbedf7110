"""The trainer service: trains recmodel incrementally from Kafka and registers model versions."""
