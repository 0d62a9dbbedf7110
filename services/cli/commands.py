"""The ``streamrec`` command: the table of subcommands and the dispatch to them.

Each subcommand lives in its own module and is imported only when used, so ``streamrec models``
does not load torch and ``streamrec recommend`` starts fast.
"""

from __future__ import annotations

import importlib
import os
import sys

# `streamrec up` starts Kafka and the services (fork + exec) while its own gRPC calls run on other
# threads; gRPC's fork handlers would abort some of those children before they exec. No streamrec
# process forks to go on using gRPC (services use the spawn start method), so the handlers are off.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

# subcommand -> (module with a ``main(argv) -> int``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("services.stack.__main__", "run the local stack: Kafka, the four services and a demo stream"),
    "ingester": ("services.ingester.__main__", "run the ingester service"),
    "trainer": ("services.trainer.__main__", "run the trainer service"),
    "registry": ("services.registry.__main__", "run the model registry service"),
    "inference": ("services.inference.__main__", "run the inference (Recommender) service"),
    "publish": ("services.cli.publish", "publish events or items from a JSONL/CSV file or stdin"),
    "recommend": ("services.cli.recommend", "ask the inference service for a user's recommendations"),
    "models": ("services.cli.models", "list, show, promote, roll back or archive model versions"),
    "kafka": ("services.common.localkafka.__main__", "fetch or run the local Kafka broker"),
}

BENCHES: dict[str, tuple[str, str]] = {
    "quality": ("bench.quality", "HR@K/NDCG@K of the streaming and offline models vs baselines"),
    "model": ("bench.model_speed", "training throughput and ONNX user-encoder latency"),
    "ingest": ("bench.ingest", "ingester events/s with 1 and 2 processes vs kafka-python and kcat copiers"),
    "pipeline": ("bench.pipeline", "the highest event rate the whole local stack sustains, per-stage events/s and lag"),
    "train": ("bench.train", "trainer events/s and publish -> registered version latency"),
    "serve": ("bench.serve", "Recommend p50/p99 and QPS vs a no-op gRPC call"),
    "index": ("bench.index", "exact vs ANN retrieval: recall and latency"),
    "freshness": ("bench.freshness", "publish -> visible in Recommend, publish -> served model"),
    "fuzz": ("bench.fuzz", "10^5 generated raw records through ingester validation: none escapes"),
}

DEV: dict[str, tuple[str, str]] = {
    "gen-proto": ("services.cli.protogen", "regenerate streamrec_proto/ from proto/"),
    "cluster": ("services.devcluster.__main__", "run etcd + kube-apiserver on loopback (built from Go sources)"),
}


def _usage(title: str, table: dict[str, tuple[str, str]], prefix: str) -> str:
    width = max(len(k) for k in table)
    lines = [f"usage: {prefix} <command> [options]", "", title]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in table.items()]
    return "\n".join(lines)


def _dispatch(table: dict[str, tuple[str, str]], argv: list[str], prefix: str, title: str) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(title, table, prefix))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in table:
        print(f"{prefix}: unknown command {name!r}\n\n{_usage(title, table, prefix)}", file=sys.stderr)
        return 2
    module = importlib.import_module(table[name][0])
    return int(module.main(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        return _dispatch(BENCHES, argv[1:], "streamrec bench", "benchmarks (each prints one JSON line):")
    if argv and argv[0] == "dev":
        return _dispatch(DEV, argv[1:], "streamrec dev", "developer commands:")
    table = {**COMMANDS, "bench": ("", "run a benchmark (streamrec bench --help)"),
             "dev": ("", "developer commands (streamrec dev --help)")}
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage("commands:", table, "streamrec"))
        return 0 if argv else 2
    return _dispatch(COMMANDS, argv, "streamrec", "commands:")

