"""Recommend vs a no-op gRPC call (Ping) on the same server: p50/p99 latency and QPS, with TLS and without.

``streamrec bench serve --items N --concurrency C --duration S`` builds a small real artifact with
recmodel (synthetic stream, HashingTextEncoder, ONNX user encoder), starts an inference server in a
child process whose catalog is the artifact's items grown to N (``bench.catalog``: new items near trained ones), and
drives it from this process with C concurrent asyncio gRPC calls for S seconds per method. The
server runs the same data plane, batcher, retrieval and gRPC stack as ``streamrec inference``; only
the Kafka watcher is left out (the model is loaded once at start). Like ``streamrec inference``, it runs
one server process per core by default (``--processes``), sharing the ports with SO_REUSEPORT; the kernel
spreads connections, not calls, over them, so with several processes each caller has a connection of its
own (``--connections``). Each process has its own model, history store and caches, as in production.

The data plane is served twice, on two ports: with mutual TLS (certificates from a throwaway local
CA, as ``streamrec up`` makes them) and in plaintext, so ``tls_cost`` compares the two on the same
model and machine. ``recommend``/``ping`` are the TLS numbers (what a deployment runs); ``--tls on``
skips the plaintext run.

Recommend traffic is a realistic mix: ``--fresh-share`` (20 %) of the calls follow a new event of the same
user, applied to the server's history store before the call, so the answer caches are invalidated as in
production. The JSON also has the server's CPU milliseconds per call, the answer cache's hit ratio,
recall@k of the served top-k against the same pipeline over exact search, and a model swap: version 2
(a changed item table, its index built from scratch) is announced while Recommend calls continue, timed
to its first answer, with the calls that failed meanwhile. Prints one JSON line.

On a small shared machine the QPS of a few seconds moves by 10-15 % from run to run. ``--repeat R`` (3)
runs Ping then Recommend R times per transport: each method reports its median round, and each paired
figure (QPS ratio, p99 ratio, p50 difference) is the median of the rounds' own figures, every round's in
``paired_rounds``. ``client_cpu_ms_per_request`` is the driver's CPU per call, on the same cores as the
servers: for Recommend it includes sending the fresh events.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench import lower_median
from bench.catalog import DEFAULT_ARTIFACT, grow_catalog, trained_artifact
from recmodel.ivf import quantize_items


class TinyOnnxEncoder:
    """Fallback when recmodel.serving is not importable: masked mean of history item vectors + a linear
    layer, exported to ONNX and run by ONNX Runtime (CPU). Same call shape as ArtifactModel.encode."""

    def __init__(self, item_ids, item_vectors: np.ndarray, max_len: int = 20, path: Path | None = None) -> None:
        import onnxruntime as ort
        import torch

        dim = item_vectors.shape[1]
        path = path or Path("/tmp/streamrec-bench/tiny_encoder.onnx")
        path.parent.mkdir(parents=True, exist_ok=True)

        class Enc(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.proj = torch.nn.Linear(dim, dim)

            def forward(self, seq, mask):
                m = mask.unsqueeze(-1)
                return self.proj((seq * m).sum(1) / m.sum(1).clamp(min=1.0))

        torch.manual_seed(0)
        torch.onnx.export(Enc().eval(), (torch.zeros(2, max_len, dim), torch.ones(2, max_len)), str(path),
                          input_names=["seq", "mask"], output_names=["user"], dynamo=False,
                          dynamic_axes={"seq": {0: "b"}, "mask": {0: "b"}, "user": {0: "b"}})
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.providers = self.session.get_providers()
        self.row = {i: r for r, i in enumerate(item_ids)}
        self.vectors = item_vectors
        self.max_len = max_len

    def encode(self, histories, now_ms):
        b, L, d = len(histories), self.max_len, self.vectors.shape[1]
        seq = np.zeros((b, L, d), dtype=np.float32)
        mask = np.zeros((b, L), dtype=np.float32)
        for i, hist in enumerate(histories):
            rows = [self.row[h[0]] for h in hist[-L:] if h[0] in self.row]
            if rows:
                seq[i, L - len(rows):] = self.vectors[rows]
                mask[i, L - len(rows):] = 1
        return self.session.run(None, {"seq": seq, "mask": mask})[0]


def _load_runtime(artifact: str | None):
    """(encoder, item_ids, item_vectors, histories, max_len, source) from a recmodel artifact, or the fallback."""
    if artifact is not None:
        from recmodel.serving import ArtifactModel

        rt = ArtifactModel.load(artifact, providers=None)
        return rt, list(rt.item_ids), np.asarray(rt.item_vectors, dtype=np.float32), rt.histories, rt.max_len, "recmodel"
    rng = np.random.default_rng(0)
    ids = [f"item-{j}" for j in range(600)]
    vecs = rng.standard_normal((600, 32)).astype(np.float32)
    histories = {f"user-{u}": [(ids[j], "click", 1_700_000_000_000 + t) for t, j in enumerate(rng.integers(0, 600, 15))]
                 for u in range(300)}
    return TinyOnnxEncoder(ids, vecs), ids, vecs, histories, 20, "tiny-onnx"


def _serve(artifact: str | None, n_items: int, index_threshold: int, max_batch: int, max_wait_ms: float, workers: int,
           tls_dir: str, conn, ports: dict[str, int] | None = None, reuse_port: bool = False) -> None:
    """Child process: load the artifact, grow the catalog to n_items, serve until told to stop. ``ports``: bind
    these (shared with the first server process, SO_REUSEPORT) instead of new ones."""
    from services.common.grpc import GrpcServer
    from services.common.process import freeze_heap
    from services.common.tls import LocalCA, TlsConfig
    from services.inference.batcher import EncoderBatcher
    from services.inference.config import IndexConfig, InferenceSection
    from services.inference.dataplane import RecommenderDataPlane
    from services.inference.histories import UserHistoryStore
    from services.inference.served_model import ItemTableModel, ServedModel
    from services.inference.repository import PRODUCTION, ModelRepository
    from services.inference.retrieval import set_search_threads
    from services.inference.servicer import RecommenderServicer

    set_search_threads(IndexConfig().search_threads)
    runtime, ids, vecs, histories, max_len, source = _load_runtime(artifact)
    n_trained = len(ids)
    extra = max(0, n_items - len(ids))
    if extra:  # new items drawn near the trained ones (bench.catalog), as a large catalog of such items would be
        vecs = grow_catalog(vecs, n_items)
        ids += [f"synthetic-{j}" for j in range(extra)]
    t = time.perf_counter()
    # Keyed by the vectors' content, as the service keys its cache by the artifact's items.npz digest.
    digest = hashlib.sha256(np.ascontiguousarray(vecs).tobytes()).hexdigest()[:24]
    cache = Path("/tmp/streamrec-bench") / f"index-{digest}-{index_threshold}.faiss"
    table = ItemTableModel(name="recommender", encoder=runtime, item_ids=ids, item_vectors=vecs, histories=histories,
                           max_len=max_len)
    model = ServedModel(table, version=1, index_config=IndexConfig(ann_threshold=index_threshold), index_cache_path=cache)
    model.warm_up(8)
    index_s = time.perf_counter() - t
    repo = ModelRepository()
    repo.swap(PRODUCTION, model)
    store = UserHistoryStore(max_len=200)
    store.merge_snapshot(histories, only_newer=False)
    batcher = EncoderBatcher(max_batch=max_batch, max_wait_s=max_wait_ms / 1000.0) if max_batch > 1 else None
    plane = RecommenderDataPlane(repo, store, InferenceSection(), batcher)
    servers = {}
    for mode, tls in (("tls", LocalCA(tls_dir).tls_config("inference")), ("plaintext", TlsConfig(plaintext=True))):
        server = GrpcServer("127.0.0.1", (ports or {}).get(mode, 0), max_workers=workers, tls=tls, reuse_port=reuse_port)
        RecommenderServicer(plane).register(server)
        server.start()
        server.set_serving(True)
        servers[mode] = server
    freeze_heap()  # as run_service does once an inference process has started
    conn.send({"ports": {mode: server.port for mode, server in servers.items()}, "users": list(histories)[:1000],
               "items": ids[:5000], "encoder": source, "index": model.index_kind,
               "index_build_s": round(index_s, 2), "providers": list(getattr(runtime, "providers", []))})
    # The next version's item table and the IVF quantizer the trainer ships with it (recmodel.ivf), made now:
    # the swap below times what serving does with them, not this.
    next_vectors = grow_catalog(vecs[:n_trained], len(ids), seed=2) if extra else vecs.copy()
    next_ivf = quantize_items(next_vectors, np.ones(len(next_vectors), dtype=bool)) \
        if len(next_vectors) >= index_threshold else None
    _control(conn, store, plane, model, lambda: _next_version(table, next_vectors, next_ivf, repo, index_threshold))
    for server in servers.values():
        server.stop(1)


def _next_version(table, vectors: np.ndarray, ivf, repo, index_threshold: int) -> float:
    """Model version 2 beside the live one, as the model watcher makes it once the artifact is loaded: a
    changed item table (the grown part redrawn), its index built from scratch with the shipped quantizer
    (no cache), warmed up, then swapped in. Its seconds."""
    from services.inference.config import IndexConfig
    from services.inference.repository import PRODUCTION
    from services.inference.served_model import ItemTableModel, ServedModel

    t = time.perf_counter()
    runtime = ItemTableModel(name=table.name, encoder=table.encoder, item_ids=table.item_ids, item_vectors=vectors,
                             histories=table.histories, max_len=table.max_len, ivf=ivf)
    model = ServedModel(runtime, version=2, index_config=IndexConfig(ann_threshold=index_threshold))
    model.warm_up(8)
    repo.swap(PRODUCTION, model)
    return time.perf_counter() - t


def _control(conn, store, plane, model, next_version) -> None:
    """The driver's side channel until "stop": fresh events (applied as the history follower applies a
    consumed one, then acknowledged), counters, the recall check and a model swap."""
    swap: dict = {}
    swapper: threading.Thread | None = None
    while True:
        msg = conn.recv()
        if msg[0] == "event":
            store.append(*msg[1:])
            conn.send(True)
        elif msg[0] == "counters":
            cpu = resource.getrusage(resource.RUSAGE_SELF)
            conn.send({"cpu_s": cpu.ru_utime + cpu.ru_stime, "hits": plane.result_cache.hits,
                       "misses": plane.result_cache.misses})
        elif msg[0] == "recall":
            conn.send(_served_recall(store, model, msg[1], msg[2]))
        elif msg[0] == "swap":
            def run() -> None:
                swap["seconds"] = next_version()
                swap["done_at"] = time.monotonic()  # CLOCK_MONOTONIC: comparable with the driver's

            swapper = threading.Thread(target=run, daemon=True)
            swapper.start()
            conn.send(True)
        elif msg[0] == "swap_wait":
            if swapper is not None:
                swapper.join()
            conn.send((swap.get("seconds"), swap.get("done_at")))
        else:
            return


class ServerProcesses:
    """The server processes of the bench: one, or several sharing its ports (SO_REUSEPORT), as
    ``inference.processes`` runs them. Each has its own model and history store, so fresh events and the
    model swap go to every one of them (as every worker follows the events and the announcements)."""

    def __init__(self, n: int, serve_args: tuple) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.procs, self.conns = [], []
        self.info: dict = {}
        try:
            for i in range(n):
                parent, child = ctx.Pipe()
                ports = self.info["ports"] if i else None
                proc = ctx.Process(target=_serve, args=(*serve_args, child, ports, n > 1))
                proc.start()
                self.procs.append(proc)
                self.conns.append(parent)
                info = parent.recv()  # the first one's ports are bound before the next one starts
                self.info = self.info or info
        except BaseException:
            self.stop()  # the ones already serving
            raise

    def ask(self, msg: tuple) -> list:
        """Send ``msg`` to every process; their answers, in order."""
        for conn in self.conns:
            conn.send(msg)
        return [conn.recv() for conn in self.conns]

    def ask_first(self, msg: tuple):
        self.conns[0].send(msg)
        return self.conns[0].recv()

    def stop(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except OSError:
                pass
        for proc in self.procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()


def _served_recall(store, model, users, k: int) -> float | None:
    """Mean recall@k of what Recommend serves (ANN retrieval, then the transition re-rank) against the same
    pipeline over exact search, for ``users`` with their current histories."""
    now = int(time.time() * 1000)
    recalls = []
    for user in users:
        known = [h for h in store.get(user) if h[0] in model.row_of]
        if not known:
            continue
        vec = model.encode([known], [now])[0]
        banned = np.array(sorted({model.row_of[h[0]] for h in known}), dtype=np.int64)
        found = []
        for exact in (False, True):
            rows, scores = model.retriever.search(vec, k, banned, exact=exact)
            found.append(set(model.rerank_with_transitions(known, vec, rows, scores, k, banned, None)[0].tolist()))
        recalls.append(len(found[0] & found[1]) / k)
    return round(float(np.mean(recalls)), 4) if recalls else None


class FreshEvents:
    """Before a share of Recommend calls, the user gets a new event (applied and acknowledged by the server
    before the timed call), so caches see the invalidations production traffic brings."""

    def __init__(self, servers: ServerProcesses, items: list[str], share: float, seed: int = 0) -> None:
        self.servers = servers
        self.items = items
        self.share = share
        self.rnd = random.Random(seed)
        self.sent = 0
        self._pool = ThreadPoolExecutor(max_workers=1)  # one user of the pipe at a time

    def _send(self, user: str) -> None:
        self.servers.ask(("event", user, self.rnd.choice(self.items), "click", int(time.time() * 1000)))
        self.sent += 1

    async def before(self, user: str) -> None:
        if self.share > 0 and self.rnd.random() < self.share:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._send, user)


# Separate connections even to one target (gRPC shares a subchannel between like channels otherwise): the
# kernel spreads connections, not calls, over server processes sharing a port.
_OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def _channels(target: str, tls, n: int) -> list:
    from services.common.grpc import open_channel

    return [open_channel(target, tls, aio=True, options=_OWN_CONNECTION) for _ in range(n)]


async def _drive(target: str, tls, method: str, make_request, concurrency: int, duration: float,
                 before=None, connections: int = 1) -> dict:
    """``concurrency`` callers over ``connections`` connections for ``duration`` seconds, after a warm-up
    call on each connection (20 at least); ``warm_up`` in the result counts those calls."""
    import grpc

    from streamrec_proto.v1 import recommender_pb2_grpc

    latencies: list[float] = []
    errors = 0
    channels = _channels(target, tls, connections)
    try:
        calls = [getattr(recommender_pb2_grpc.RecommenderStub(c), method) for c in channels]
        warm_up = max(20, len(calls))
        for i in range(warm_up):
            await calls[i % len(calls)](make_request(), timeout=30)
        stop_at = time.perf_counter() + duration

        async def worker(call):
            nonlocal errors
            while time.perf_counter() < stop_at:
                request = make_request()
                if before is not None:
                    await before(request.user_id)
                t = time.perf_counter()
                try:
                    await call(request, timeout=10)
                    latencies.append(time.perf_counter() - t)
                except grpc.RpcError:
                    errors += 1

        start, cpu_start = time.perf_counter(), _cpu_s()
        await asyncio.gather(*(worker(calls[i % len(calls)]) for i in range(concurrency)))
        elapsed, client_cpu = time.perf_counter() - start, _cpu_s() - cpu_start
    finally:
        for c in channels:
            await c.close()
    lat = np.array(latencies) * 1e3
    return {"requests": len(latencies), "errors": errors, "qps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 3) if len(lat) else None, "warm_up": warm_up,
            "client_cpu_ms_per_request": round(1e3 * client_cpu / max(len(latencies), 1), 3)}


def _cpu_s() -> float:
    """CPU seconds of this process (the driver: its callers and, for Recommend, the fresh events it sends)."""
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    return cpu.ru_utime + cpu.ru_stime


async def _swap_phase(servers: ServerProcesses, target: str, tls, users: list[str], args: argparse.Namespace) -> dict:
    """Announce version 2 to every server process and keep calling Recommend until each has swapped and an
    answer of version 2 came back: the seconds from the announcement until every process serves it (the
    later of that answer and the last process's swap), and the calls that failed meanwhile."""
    import grpc

    from streamrec_proto.v1 import recommender_pb2, recommender_pb2_grpc

    rnd = random.Random(1)
    counts = {"requests": 0, "errors": 0}
    served_at: list[float] = []
    channels = _channels(target, tls, args.connections)
    try:
        stubs = [recommender_pb2_grpc.RecommenderStub(c) for c in channels]
        t0 = time.monotonic()
        servers.ask(("swap",))
        give_up = t0 + 600
        swapped = asyncio.get_running_loop().run_in_executor(None, servers.ask, ("swap_wait",))

        async def worker(stub):
            while (not served_at or not swapped.done()) and time.monotonic() < give_up:
                try:
                    reply = await stub.Recommend(recommender_pb2.RecommendRequest(user_id=rnd.choice(users), k=args.k),
                                                 timeout=10)
                    counts["requests"] += 1
                    if reply.model_version == 2 and not served_at:
                        served_at.append(time.monotonic())
                except grpc.RpcError:
                    counts["errors"] += 1

        await asyncio.gather(*(worker(stubs[i % len(stubs)]) for i in range(args.concurrency)))
        done = await swapped
    finally:
        for c in channels:
            await c.close()
    seconds = [d[0] for d in done]
    done_at = [d[1] for d in done]
    ready = served_at and None not in done_at
    return {"announce_to_serving_s": round(max(served_at[0], *done_at) - t0, 2) if ready else None,
            "build_index_warm_up_s": round(max(seconds), 2) if None not in seconds else None, **counts}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    from services.inference.config import BatchingConfig

    p = argparse.ArgumentParser(prog="streamrec bench serve", description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per method")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--index-threshold", type=int, default=None,
                   help="ANN above this many items (default: the service default)")
    p.add_argument("--max-batch", type=int, default=BatchingConfig().max_batch, help="encoder micro-batch size (1 = off)")
    p.add_argument("--max-wait-ms", type=float, default=BatchingConfig().max_wait_ms,
                   help="how long the first request of an encoder batch waits for company")
    p.add_argument("--workers", type=int, default=16, help="gRPC server threads")
    p.add_argument("--processes", type=int, default=0,
                   help="server processes sharing the port (default: as inference.processes, one per core)")
    p.add_argument("--connections", type=int, default=0,
                   help="client connections (default: one per caller with several processes, else one)")
    p.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT)
    p.add_argument("--fresh-share", type=float, default=0.2,
                   help="share of Recommend calls that follow a new event of the same user (invalidates its caches)")
    p.add_argument("--recall-users", type=int, default=200, help="users whose served top-k is checked against exact search")
    p.add_argument("--repeat", type=int, default=3,
                   help="rounds of Ping then Recommend per transport; each figure is the median of its rounds")
    p.add_argument("--tls", choices=["both", "on"], default="both",
                   help="both: measure mutual TLS and plaintext (default); on: TLS only")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat: at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from services.inference.config import IndexConfig, InferenceSection
    from streamrec_proto.v1 import recommender_pb2

    threshold = IndexConfig().ann_threshold if args.index_threshold is None else args.index_threshold
    args.artifact.parent.mkdir(parents=True, exist_ok=True)
    try:
        artifact = str(trained_artifact(args.artifact))
    except ImportError as exc:  # recmodel.export / serving not available: use the tiny ONNX encoder
        print(f"# recmodel artifact unavailable ({exc}); using the tiny ONNX encoder", file=sys.stderr)
        artifact = None
    from services.common.tls import LocalCA, TlsConfig

    tls_dir = tempfile.mkdtemp(prefix="streamrec-bench-tls-")
    client_tls = {"tls": LocalCA(tls_dir).tls_config("app"), "plaintext": TlsConfig(plaintext=True)}
    modes = ["tls", "plaintext"] if args.tls == "both" else ["tls"]
    processes = args.processes or InferenceSection().worker_processes()
    args.connections = args.connections or (1 if processes == 1 else args.concurrency)
    servers = ServerProcesses(processes, (artifact, args.items, threshold, args.max_batch, args.max_wait_ms, args.workers,
                                           tls_dir))
    results: dict[str, dict] = {}
    try:
        info = servers.info
        users = info["users"] or ["nobody"]
        fresh = FreshEvents(servers, info["items"], args.fresh_share)
        for mode in modes:
            target = f"127.0.0.1:{info['ports'][mode]}"
            rnd = random.Random(0)
            rounds = []
            for _ in range(args.repeat):
                start = _counters(servers)
                ping = asyncio.run(_drive(target, client_tls[mode], "Ping", recommender_pb2.PingRequest,
                                          args.concurrency, args.duration, connections=args.connections))
                ping["server_cpu_ms_per_request"] = _delta(
                    start, _counters(servers), ping["requests"] + ping.pop("warm_up"))["server_cpu_ms_per_request"]
                start = _counters(servers)
                rec = asyncio.run(_drive(
                    target, client_tls[mode], "Recommend",
                    lambda: recommender_pb2.RecommendRequest(user_id=rnd.choice(users), k=args.k),
                    args.concurrency, args.duration, before=fresh.before, connections=args.connections))
                rec.update(_delta(start, _counters(servers), rec["requests"] + rec.pop("warm_up")))
                rounds.append({"recommend": rec, "ping": ping})
            results[mode] = _summarize(rounds)
        recall = servers.ask_first(("recall", users[:args.recall_users], args.k))
        swap = asyncio.run(_swap_phase(servers, f"127.0.0.1:{info['ports']['tls']}", client_tls["tls"], users, args))
    finally:
        servers.stop()
        shutil.rmtree(tls_dir, ignore_errors=True)
    out = {
        "bench": "serve", "items": args.items, "concurrency": args.concurrency, "duration_s": args.duration,
        "k": args.k, "index": info["index"], "index_build_s": info["index_build_s"], "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "providers": info["providers"], "encoder": info["encoder"], "cpus": os.cpu_count(), "transport": "mtls",
        "server_processes": processes, "connections": args.connections,
        "recommend": results["tls"]["recommend"], "ping": results["tls"]["ping"],
        "fresh_share": args.fresh_share, "recall_at_k_vs_exact": recall,
        "model_swap": swap,
        "repeat": args.repeat, **results["tls"]["paired"],
    }
    if "plaintext" in results:
        out["plaintext"] = results["plaintext"]
        out["tls_cost"] = _tls_cost(results["tls"], results["plaintext"])
    print(json.dumps(out))
    return 0


def _summarize(rounds: list[dict]) -> dict:
    """Per method, the round with the median QPS plus every round's QPS (``qps_rounds``); and the paired
    figures of Recommend against Ping, each the median over rounds of the figure of one round, whose two
    runs followed each other (so a slow spell of the machine weighs on both sides of a ratio)."""
    out: dict = {}
    for method in ("recommend", "ping"):
        runs = [r[method] for r in rounds]
        out[method] = {**lower_median(runs, lambda r: r["qps"]), "qps_rounds": [r["qps"] for r in runs]}
    paired = {
        "recommend_qps_over_ping": [round(r["recommend"]["qps"] / max(r["ping"]["qps"], 1e-9), 3) for r in rounds],
        "recommend_p99_over_ping": [_ratio(r["recommend"]["p99_ms"], r["ping"]["p99_ms"]) for r in rounds],
        "recommend_p50_minus_ping_ms": [_diff(r["recommend"]["p50_ms"], r["ping"]["p50_ms"]) for r in rounds],
    }
    out["paired"] = {key: lower_median([v for v in values if v is not None], lambda v: v)
                     for key, values in paired.items()}
    out["paired"]["paired_rounds"] = paired
    return out


def _counters(servers: ServerProcesses) -> dict:
    """CPU seconds and answer-cache counts, summed over the server processes, and the Recommend calls
    (cache lookups) each process has answered."""
    answers = servers.ask(("counters",))
    out = {key: sum(a[key] for a in answers) for key in answers[0]}
    out["calls"] = [a["hits"] + a["misses"] for a in answers]
    return out


def _delta(before: dict, after: dict, requests: int) -> dict:
    """Server CPU seconds per Recommend and the answer cache's hit ratio over one run."""
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    return {"server_cpu_ms_per_request": round(1e3 * (after["cpu_s"] - before["cpu_s"]) / max(requests, 1), 3),
            "cache_hit_ratio": round(hits / (hits + misses), 3) if hits + misses else None,
            "calls_per_process": [b - a for a, b in zip(before["calls"], after["calls"])]}


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def _diff(a, b):
    return round(a - b, 3) if a is not None and b is not None else None


def _tls_cost(tls: dict, plain: dict) -> dict:
    """Extra p50/p99 milliseconds and the QPS ratio of mutual TLS over plaintext, per method."""
    cost = {}
    for method in ("recommend", "ping"):
        a, b = tls[method], plain[method]
        if a["p50_ms"] is None or b["p50_ms"] is None:
            continue
        cost[method] = {"p50_ms_added": round(a["p50_ms"] - b["p50_ms"], 3),
                        "p99_ms_added": round(a["p99_ms"] - b["p99_ms"], 3),
                        "qps_ratio": round(a["qps"] / b["qps"], 3) if b["qps"] else None}
    return cost


if __name__ == "__main__":
    sys.exit(main())
