"""Plumbing shared by every streamrec service: config, logging, errors, metrics, Kafka, gRPC."""
