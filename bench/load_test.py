"""Load test of the embedded default: many tiny estimates from many concurrent clients.

    python bench/load_test.py                          # 1000 estimates from 50 clients
    python bench/load_test.py --estimates 40 --clients 8 --json out.json

Starts `llc serve` as a user would (a local Ray cluster and a SQLite file, in a temporary
directory) with `--driver-python` pointing at a tiny script that prints what cluster.driver
prints for a one-chain estimate (started, chain, result) without loading a model: every Ray
job, log stream, store write and watch is real, only the sampling is left out. Each client
has its own gRPC channel and `llc-client-id` and runs its share one after another: create
(a fresh request_id, retried on UNAVAILABLE), then watch from the first event to the
terminal snapshot. Stops by itself: everything is bounded by --timeout.

Checks, then prints: every estimate reached a terminal state, the server lists exactly the
estimates created (none lost, none duplicated, one per request_id), every watch ran in
increasing seq and ended with the terminal snapshot. Reports throughput (estimates finished
per second of the whole run) and CreateEstimate latency (p50/p99/max). Exit status 1 if a
check failed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "clients" / "python")]

from cluster.contract.events import encode  # noqa: E402
from cluster.local_ray import free_port  # noqa: E402
from llc.v1 import llc_pb2 as pb  # noqa: E402
from llc.v1 import llc_pb2_grpc  # noqa: E402

TERMINAL = (pb.ESTIMATE_STATE_SUCCEEDED, pb.ESTIMATE_STATE_FAILED, pb.ESTIMATE_STATE_CANCELLED)


def fake_driver(path: Path) -> str:
    """An executable standing in for `python` in `python -m cluster.driver`: the events of a
    one-chain estimate, at once."""
    chain = {"chain": 0, "seed": 1, "llc": 1.5, "status": "succeeded", "loss_trace": [1.0, 1.1], "mala_acceptance": 0.9,
             "frac_below_init": 0.1, "steps": 2, "message": "", "attempts": 1}
    result = {"restrictions": [{"name": "full", "llc_mean": 1.5, "llc_std": 0.0, "llc_per_chain": [1.5],
                                "init_loss": 1.0, "diagnostics": {"diverged_chains": []}, "warnings": [],
                                "chains": [chain], "moved_tensors": [], "moved_elements": 4, "config": {}}],
              "provenance": {"driver": "bench/load_test.py fake"}, "warnings": []}
    events = [{"type": "started", "seq": 0, "time": 0, "chains_total": 1, "restrictions": ["full"]},
              {"type": "chain", "seq": 1, "time": 0, "restriction": "full", "chain": 0, "status": "succeeded",
               "llc": 1.5, "attempt": 1},
              {"type": "result", "seq": 2, "time": 0, "result": result}]
    path.write_text("#!/bin/sh\ncat <<'EOF'\n" + "\n".join(encode(e) for e in events) + "\nEOF\n")
    path.chmod(0o755)
    return str(path)


def tiny_spec() -> pb.EstimateSpec:
    spec = pb.EstimateSpec(model=pb.ModelRef(hub_id="load-test/tiny"), dataset=pb.DatasetRef(hub_id="load-test/data"))
    spec.sampler.chains, spec.sampler.draws = 1, 2
    return spec


@dataclass
class Outcome:
    request_id: str
    estimate_id: str = ""
    create_s: float = 0.0  # the successful CreateEstimate call
    create_retries: int = 0
    done_s: float = 0.0  # from the create call's start to the terminal snapshot
    state: str = ""
    seqs: list[int] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    error: str = ""


async def one_estimate(stub, metadata, request_id: str) -> Outcome:
    out = Outcome(request_id)
    start = time.perf_counter()
    request = pb.CreateEstimateRequest(request_id=request_id, spec=tiny_spec())
    while True:
        t0 = time.perf_counter()
        try:
            created = await stub.CreateEstimate(request, metadata=metadata, timeout=60)
            out.create_s = time.perf_counter() - t0
            break
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or out.create_retries >= 5:
                out.error = f"CreateEstimate: {exc.code().name}: {exc.details()}"
                return out
            out.create_retries += 1  # safe: the request_id makes the retry idempotent
            await asyncio.sleep(0.5 * out.create_retries)
    out.estimate_id = created.estimate.estimate_id
    after = -1
    while True:  # a dropped watch resumes after the last seq seen, as the SDK does
        try:
            async for msg in stub.WatchEstimate(pb.WatchEstimateRequest(estimate_id=out.estimate_id, after_seq=after),
                                                metadata=metadata, timeout=600):
                out.seqs.append(msg.seq)
                out.kinds.append(msg.WhichOneof("event"))
                if msg.HasField("snapshot"):
                    if msg.snapshot.state in TERMINAL:
                        out.state = pb.EstimateState.Name(msg.snapshot.state).removeprefix("ESTIMATE_STATE_")
                        out.done_s = time.perf_counter() - start
                        return out
                else:
                    after = msg.seq
            out.error = "the watch ended without a terminal snapshot"
            return out
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                out.error = f"WatchEstimate: {exc.code().name}: {exc.details()}"
                return out
            await asyncio.sleep(1.0)


async def client(address: str, index: int, count: int, run: str, outcomes: list[Outcome]) -> None:
    """One client's share, one estimate after another; each outcome is kept as soon as it is known."""
    metadata = [("llc-client-id", f"load-{index}")]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = llc_pb2_grpc.LLCServiceStub(channel)
        for k in range(count):
            outcomes.append(await one_estimate(stub, metadata, f"{run}-{index}-{k}"))


async def listed_ids(address: str) -> list[str]:
    ids, token = [], ""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = llc_pb2_grpc.LLCServiceStub(channel)
        while True:
            page = await stub.ListEstimates(pb.ListEstimatesRequest(page_size=500, page_token=token), timeout=60)
            ids += [e.estimate_id for e in page.estimates]
            token = page.next_page_token
            if not token:
                return ids


def percentile(values: list[float], q: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else float("nan")


def check(outcomes: list[Outcome], listed: list[str], estimates: int) -> list[str]:
    """What went wrong; [] = every estimate accounted for exactly once, in order."""
    problems = [f"{o.request_id}: {o.error}" for o in outcomes if o.error]
    ids = [o.estimate_id for o in outcomes if o.estimate_id]
    if len(ids) != estimates or len(set(ids)) != len(ids):
        problems.append(f"{len(set(ids))} distinct estimates created for {estimates} requests ({len(ids)} ids)")
    if sorted(listed) != sorted(set(ids)):
        lost, extra = set(ids) - set(listed), set(listed) - set(ids)
        problems.append(f"ListEstimates differs from what was created: {len(lost)} missing, {len(extra)} extra, "
                        f"{len(listed) - len(set(listed))} listed twice")
    for o in outcomes:
        if o.estimate_id and not o.error:
            events = [s for s, k in zip(o.seqs, o.kinds) if k != "snapshot"]
            if any(b < a for a, b in zip(o.seqs, o.seqs[1:])) or o.kinds[-1:] != ["snapshot"]:
                problems.append(f"{o.estimate_id}: watch seqs {o.seqs} kinds {o.kinds}")
            elif events != [0, 1] or sorted(k for k in o.kinds if k != "snapshot") != ["chain", "started"]:
                problems.append(f"{o.estimate_id}: events missing or repeated: {list(zip(o.seqs, o.kinds))}")
    return problems


def start_server(workdir: Path, num_cpus: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    address = f"127.0.0.1:{port}"
    # The server runs this checkout's code, whatever is installed.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python"),
                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llc", "serve", "--listen", address, "--store", str(workdir / "jobs.sqlite"),
         "--num-cpus", str(num_cpus), "--driver-python", fake_driver(workdir / "fake-python"),
         "--max-active-per-client", "16"],
        cwd=workdir, env=env, stdout=open(workdir / "serve.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    return proc, address


async def wait_serving(address: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"llc serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(service="llc.v1.LLCService"), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError(f"llc serve did not serve within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # our own session: the server and the Ray it started
            proc.wait(timeout=30)


async def run_load(estimates: int, clients: int, num_cpus: int = 2, timeout: float = 1800.0,
                   workdir: str = "") -> dict:
    """Runs the load test; returns the report (its "problems" list is empty when every check passed)."""
    tmp = tempfile.TemporaryDirectory(prefix="llc-load-") if not workdir else None
    work = Path(workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    proc, address = start_server(work, num_cpus)
    try:
        await wait_serving(address, proc, 120, work / "serve.log")
        shares = [estimates // clients + (i < estimates % clients) for i in range(clients)]
        run = uuid.uuid4().hex[:8]
        start, outcomes, late = time.perf_counter(), [], ""
        try:
            await asyncio.wait_for(asyncio.gather(*(client(address, i, n, run, outcomes)
                                                    for i, n in enumerate(shares))), timeout)
        except asyncio.TimeoutError:  # report what finished; the estimates in flight count as problems
            late = f"--timeout {timeout:.0f} s passed with {len(outcomes)} of {estimates} estimates finished"
        wall = time.perf_counter() - start
        try:
            listed, list_error = await listed_ids(address), ""
        except grpc.aio.AioRpcError as exc:
            listed, list_error = [], f"ListEstimates: {exc.code().name}: {exc.details()}"
    finally:
        stop_server(proc)
        if tmp is not None:
            tmp.cleanup()
    creates = [o.create_s for o in outcomes if o.estimate_id]
    done = [o.done_s for o in outcomes if o.state]
    states = {s: sum(o.state == s for o in outcomes) for s in sorted({o.state for o in outcomes if o.state})}
    return {"estimates": estimates, "clients": clients, "num_cpus": num_cpus, "wall_s": round(wall, 2),
            "throughput_per_s": round(len(done) / wall, 2), "states": states,
            "create_retries": sum(o.create_retries for o in outcomes),
            "create_latency_ms": {"p50": round(1000 * percentile(creates, 50), 1),
                                  "p99": round(1000 * percentile(creates, 99), 1),
                                  "max": round(1000 * max(creates, default=float("nan")), 1)},
            "time_to_terminal_s": {"p50": round(percentile(done, 50), 2), "p99": round(percentile(done, 99), 2)},
            "problems": [p for p in (late, list_error) if p] + check(outcomes, listed, estimates)[:20],
            "outcomes": [asdict(o) for o in outcomes]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--estimates", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--timeout", type=float, default=1800.0, help="the whole run's bound, seconds")
    parser.add_argument("--workdir", help="keep the store and serve.log here (default: a temporary directory)")
    parser.add_argument("--json", help="also write the report (with every estimate's outcome) here")
    args = parser.parse_args(argv)
    report = asyncio.run(run_load(args.estimates, args.clients, args.num_cpus, args.timeout, args.workdir or ""))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    summary = {k: v for k, v in report.items() if k != "outcomes"}
    print(json.dumps(summary, indent=1))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
