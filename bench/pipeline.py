"""``streamrec bench pipeline``: the highest event rate the whole local stack sustains.

Starts the local stack (broker, ingester, trainer, registry, inference, on free ports in a temporary
directory), publishes the catalog and a warm-up stream until a model is served, then ramps the
published rate through ``--rates``, ``--step-s`` seconds each. Events are JSON on `events.raw`,
published by kcat (librdkafka) fed at the step's pace, so the publisher is not the limit.

At the end of each step every stage's lag is read from its own metrics: the ingester's consumer lag
on `events.raw`, the trainer's on `events`, and the inference history follower's. A stage keeps up
when its lag is at most ``--max-lag-s`` seconds of events at that rate; a step is sustained when
every stage keeps up and the publisher reached 95 % of the rate. The ramp stops after the first step
that is not sustained. Each stage's own events/s over the step is reported too, from its counters, and
the trainer's users_shed_per_s: users whose new events its steps left to idle replay because the stream
arrived faster than it trains every user (their events still reach the histories and the transition table).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from bench.kcat import PacedKcat
from recmodel.data import Event
from services.stack.status import scrape_with, total


def _random_clicks(item_ids: list[str], n_users: int = 5000, seed: int = 0) -> Iterator[Event]:
    """Clicks of ``n_users`` users on uniformly drawn items, for ever."""
    rng = random.Random(seed)
    for n in itertools.count():
        user = f"u{rng.randrange(n_users)}"
        yield Event(event_id=f"p{n}", user_id=user, item_id=rng.choice(item_ids), type="click", value=1.0,
                    timestamp_ms=0)


def _stage_readings(stack) -> dict:
    # A reading missed (a service too busy to answer in time) must not count as zero events and no lag.
    ingester = scrape_with(stack.services["ingester"].metrics_url, "streamrec_ingester_records_out_total")
    trainer = scrape_with(stack.services["trainer"].metrics_url, "streamrec_trainer_events_trained_total")
    inference = scrape_with(stack.services["inference"].metrics_url, "streamrec_inference_history_events_total")
    events = stack.kafka_config.topics.name("events")
    return {
        "ingester": {"done": total(ingester, "streamrec_ingester_records_out_total", topic=events),
                     "lag": total(ingester, "streamrec_ingester_consumer_lag_records",
                                  topic=stack.kafka_config.topics.name("events_raw"))},
        "trainer": {"done": total(trainer, "streamrec_trainer_events_trained_total"),
                    "lag": total(trainer, "streamrec_trainer_consumer_lag_records"),
                    # users whose new events a step left to replay (the stream outpacing full training)
                    "users_shed": total(trainer, "streamrec_trainer_users_shed_total")},
        "history": {"done": total(inference, "streamrec_inference_history_events_total"),
                    "lag": total(inference, "streamrec_inference_history_lag_records")},
    }


def judge_step(rate: float, published: float, before: dict, after: dict, elapsed: float, max_lag_s: float) -> dict:
    """One step's report from the stages' readings at its start and end (``{stage: {"done", "lag"}}``).

    A stage keeps up when its lag at the end is at most ``max_lag_s`` seconds of events at ``rate``, or
    smaller than at the start (it is draining a backlog); the step is sustained when every stage keeps
    up and the publisher reached 95 % of the rate."""
    budget = rate * max_lag_s
    stages = {name: {"events_per_s": round((after[name]["done"] - before[name]["done"]) / elapsed, 1),
                     "lag_at_start": int(before[name]["lag"]), "lag": int(after[name]["lag"]),
                     "keeps_up": after[name]["lag"] <= max(budget, before[name]["lag"] - 1),
                     # any other counter a stage reports, per second over the step
                     **{f"{key}_per_s": round((after[name][key] - before[name][key]) / elapsed, 1)
                        for key in after[name] if key not in ("done", "lag")}}
              for name in after}
    sustained = published >= 0.95 * rate and all(s["keeps_up"] for s in stages.values())
    return {"rate": rate, "published_per_s": round(published, 1), "sustained": sustained, "stages": stages}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="streamrec bench pipeline", description=__doc__)
    p.add_argument("--rates", default="500,1000,2000,5000", help="events/s per step, comma separated, rising")
    p.add_argument("--step-s", type=float, default=60.0)
    p.add_argument("--max-lag-s", type=float, default=10.0, help="a stage keeps up with at most this many seconds "
                   "of events behind at the end of a step")
    p.add_argument("--export-interval", type=float, default=20.0)
    p.add_argument("--text-encoder", default="hashing", choices=["hashing", "minilm"])
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--plaintext", action="store_true",
                   help="run the stack without TLS, authentication or ACLs (gRPC and Kafka), to see what they cost")
    args = p.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if not rates or min(rates) <= 0 or args.step_s <= 0:
        p.error("--rates: positive events/s; --step-s: positive seconds")
    if shutil.which("kcat") is None:
        print("streamrec bench pipeline: kcat is not installed (Debian package `kcat`); run `make install`",
              file=sys.stderr)
        return 1

    from recmodel.data import SyntheticStream
    from services.stack.demo import publish_items
    from services.stack.stack import LocalStack, StackOptions, StackPorts

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="streamrec-bench-pipeline-"))
    stack = LocalStack(StackOptions(work_dir=work, ports=StackPorts.free(), export_interval_s=args.export_interval,
                                    text_encoder=args.text_encoder, fresh=True, plaintext=args.plaintext))
    items = SyntheticStream(seed=5).items()
    steps: list[dict] = []
    wall = time.monotonic()
    with stack:
        publish_items(stack.kafka_config, items)
        publisher = PacedKcat(stack.kafka.bootstrap_servers, stack.kafka_config.topics.name("events_raw"),
                              _random_clicks([it.item_id for it in items])).start()
        try:
            publisher.rate = 200.0  # warm-up until a model is served and every stage has caught up
            stack.wait_serving(600)
            deadline = time.monotonic() + 600
            while any(st["lag"] > 1000 for st in _stage_readings(stack).values()) and time.monotonic() < deadline:
                time.sleep(2)
            for rate in rates:
                before, sent0, t0 = _stage_readings(stack), publisher.sent, time.monotonic()
                publisher.rate = rate
                time.sleep(args.step_s)
                # Read while still publishing (no pause to drain in); the lag gauges are at most 5 s old.
                after = _stage_readings(stack)
                elapsed = time.monotonic() - t0
                published = (publisher.sent - sent0) / elapsed
                steps.append(judge_step(rate, published, before, after, elapsed, args.max_lag_s))
                print(json.dumps({"step": steps[-1]}), file=sys.stderr, flush=True)
                if not steps[-1]["sustained"]:
                    break
        finally:
            publisher.close()
    sustained = [s["rate"] for s in steps if s["sustained"]]
    print(json.dumps({
        "bench": "pipeline",
        "sustained_events_per_s": max(sustained) if sustained else 0.0,
        "bottleneck": next((name for s in steps if not s["sustained"]
                            for name, st in s["stages"].items() if not st["keeps_up"]), None),
        "steps": steps,
        "step_s": args.step_s,
        "max_lag_s": args.max_lag_s,
        "text_encoder": args.text_encoder,
        "kafka": "PLAINTEXT" if not stack.kafka_secured else "mutual TLS, ACLs",
        "seconds": round(time.monotonic() - wall, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
