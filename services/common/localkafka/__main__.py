"""``python -m services.common.localkafka fetch|run``: fetch the jars, or run a broker in the foreground."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from services.common.localkafka.broker import KafkaBrokerError, LocalKafka, fetch_jars
from services.common.localkafka.cluster import LocalKafkaCluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.common.localkafka")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download the broker jars from Maven Central into the cache")
    run = sub.add_parser("run", help="run a broker until interrupted")
    run.add_argument("--port", type=int, default=9092)
    run.add_argument("--data-dir", default=None)
    run.add_argument("--brokers", type=int, default=1,
                     help="nodes on loopback; 3 gives replication factor 3 and min.insync.replicas 2")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "fetch":
            print(fetch_jars())
            return 0
        kafka = (LocalKafkaCluster(args.brokers, data_dir=args.data_dir, ports=[args.port]) if args.brokers > 1
                 else LocalKafka(data_dir=args.data_dir, port=args.port))
        with kafka:
            print(f"kafka listening on {kafka.bootstrap_servers}", flush=True)
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            try:
                stop.wait()
            except KeyboardInterrupt:
                pass
        return 0
    except KafkaBrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
