"""streamrec model library: data, models, incremental training, evaluation and export.

A pure library: it never imports service, Kafka, gRPC or Kubernetes code.
"""

__all__: list[str] = []
