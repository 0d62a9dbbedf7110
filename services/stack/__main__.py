"""``streamrec up``: the whole system on this machine, with a demo stream, until Ctrl-C."""

from __future__ import annotations

import argparse
import itertools
import signal
import sys
import threading
import time
from pathlib import Path

from services.common.logging import configure_logging
from services.stack.stack import LocalStack, StackOptions, StackPorts
from services.stack.status import maximum, scrape, total


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="streamrec up", description=__doc__)
    p.add_argument("--data", help="a dataset to stream instead of the synthetic demo")
    p.add_argument("--format", default="synthetic", choices=["synthetic", "ml-100k", "movielens-csv", "jsonl"])
    p.add_argument("--rate", type=float, default=100.0, help="events published per second (default 100)")
    p.add_argument("--events", type=int, default=None, help="stop publishing after this many events")
    p.add_argument("--work-dir", type=Path, default=Path(".streamrec"), help="data and logs (default .streamrec/)")
    p.add_argument("--fresh", action="store_true", help="start from an empty work dir")
    p.add_argument("--with-prometheus", action="store_true", help="also run a local Prometheus scraping every service")
    p.add_argument("--export-interval", type=float, default=20.0, help="seconds between model versions")
    p.add_argument("--exit-after", type=float, default=None, help="stop by itself after this many seconds")
    p.add_argument("--kafka-port", type=int, default=9092, help="the broker's PLAINTEXT listener (the administrator's)")
    p.add_argument("--kafka-tls-port", type=int, default=9093, help="the broker's mutual-TLS listener (the services')")
    p.add_argument("--plaintext", action="store_true",
                   help="run gRPC and Kafka without TLS or authorization (by default the stack makes its own CA and "
                        "certificates, and each service may use only its own Kafka topics)")
    return p.parse_args(argv)


def _dataset(args: argparse.Namespace):
    from recmodel.data import SyntheticStream, load_dataset

    if args.data is None or args.format == "synthetic":
        stream = SyntheticStream(seed=7)
        return stream.items(), stream.events()
    ds = load_dataset(args.data, args.format)
    return ds.items, iter(sorted(ds.events, key=lambda e: e.timestamp_ms))


def _banner(stack: LocalStack, prometheus: bool, user: str) -> str:
    s = stack.services
    lines = [
        "",
        "streamrec is up",
        *([f"  kafka       {stack.kafka.ssl_bootstrap_servers} (mutual TLS, ACLs per service)"
           f"   admin {stack.kafka.bootstrap_servers} (PLAINTEXT, loopback)"] if stack.kafka_secured
          else [f"  kafka       {stack.kafka.bootstrap_servers}"]),
        f"  registry    grpc {s['registry'].grpc_target}   metrics {s['registry'].metrics_url}",
        f"  inference   grpc {s['inference'].grpc_target}   metrics {s['inference'].metrics_url}",
        f"  ingester    metrics {s['ingester'].metrics_url}",
        f"  trainer     metrics {s['trainer'].metrics_url}",
    ]
    if prometheus:
        lines.append(f"  prometheus  http://127.0.0.1:{stack.options.ports.prometheus}")
    lines += [
        f"  logs        {stack.work_dir / 'logs'}",
        (f"  credentials {stack.tls_dir}  (a local CA; mutual TLS on every gRPC call and Kafka connection)"
         if not stack.options.plaintext else "  credentials none: gRPC and Kafka run in PLAINTEXT, unauthenticated (--plaintext)"),
        "",
        "Next, in another terminal:",
        f"  streamrec recommend {user:<13} # a user's recommendations once a model is served",
        "  streamrec models list             # registered versions and aliases",
        "  streamrec publish FILE.jsonl      # publish your own events (JSONL or CSV)",
        *([f"  (the CLI finds its certificates in .streamrec/tls; from elsewhere: export STREAMREC_TLS_DIR={stack.tls_dir})"]
          if not stack.options.plaintext and stack.tls_dir != (Path(".streamrec") / "tls").resolve() else []),
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


def _progress(stack: LocalStack, publisher) -> str:
    s = stack.services
    ingest = scrape(s["ingester"].metrics_url)
    trainer = scrape(s["trainer"].metrics_url)
    registry = scrape(s["registry"].metrics_url)
    inference = scrape(s["inference"].metrics_url)
    events_topic = stack.kafka_config.topics.name("events")
    served = maximum(inference, "streamrec_inference_model_version", alias="production")
    down = [name for name, svc in s.items() if not svc.alive()]
    return (
        f"[{time.strftime('%H:%M:%S')}] published {publisher.events_published:,} events"
        f" | ingested {int(total(ingest, 'streamrec_ingester_records_out_total', topic=events_topic)):,}"
        f" | trained {int(total(trainer, 'streamrec_trainer_events_trained_total')):,}"
        f" | versions {int(total(registry, 'streamrec_registry_versions_registered_total'))}"
        f" | serving {'v%d' % served if served else 'popularity (no model yet)'}"
        + (f" | DOWN: {', '.join(down)}" if down else "")
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    configure_logging("WARNING")
    options = StackOptions(work_dir=args.work_dir, fresh=args.fresh, export_interval_s=args.export_interval,
                           ports=StackPorts(kafka=args.kafka_port, kafka_tls=args.kafka_tls_port), plaintext=args.plaintext)
    stack = LocalStack(options)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    print("starting Kafka and the four services (first start takes a minute)...", flush=True)
    from services.stack.demo import DemoPublisher

    publisher = None
    try:
        stack.start(with_prometheus=args.with_prometheus)
        items, events = _dataset(args)
        first = next(events, None)
        if first is None:
            raise ValueError("the dataset has no events")
        events = itertools.chain([first], events)
        # The demo stream publishes as an app would: with the `app` certificate, allowed to write the raw topics.
        publisher = DemoPublisher(stack.kafka_config_for("app"), items, events, rate=args.rate,
                                  limit=args.events).start()
        # The first user in the stream has a history by the time a model is served.
        print(_banner(stack, args.with_prometheus, first.user_id), flush=True)
        started = time.monotonic()
        while not stopping.is_set():
            for name in stack.restart_dead():
                print(f"{name} exited; restarted it (log: {stack.services[name].log_path})", flush=True)
            print(_progress(stack, publisher), flush=True)
            if args.exit_after is not None and time.monotonic() - started > args.exit_after:
                break
            stopping.wait(5.0)
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - one readable line, details in the logs
        print(f"error: {exc}", file=sys.stderr)
        if publisher is not None:
            publisher.stop()
        stack.stop()
        return 1
    print("stopping...", flush=True)
    if publisher is not None:
        publisher.stop()
    stack.stop()
    print("stopped; nothing left running.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
