"""The driver of one LLC job on Ray: `python -m cluster.driver`.

    LLC_JOB_SPEC='{...}' python -m cluster.driver            # inside a Ray job (the front end submits this)
    RAY_ADDRESS=127.0.0.1:6379 python -m cluster.driver --spec job.json
    python -m cluster.driver --spec job.json --local          # starts a private local Ray

It reads the JobSpec, checks the cluster can hold a chain, starts chain workers
(each loads the model and data once), reports the preview, runs every
(restriction, chain) unit and prints `LLC_EVENT` lines (cluster.contract.events):
started, preview, progress, chain, then result (exit 0) or error (exit 1).
SIGTERM or SIGINT (Ray's stop_job) cancels: every worker is killed at once,
which frees its CPUs, GPUs and memory, and the job ends with a CANCELLED error.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from cluster.contract.errors import InvalidArgument, LLCError, Unavailable
from cluster.contract.events import EventWriter
from cluster.contract.spec import JobSpec

if TYPE_CHECKING:
    from cluster.scheduling import ChainReport

log = logging.getLogger("cluster.driver")

# Caps the chain workers of one job (0 = one per chain slot of the cluster), e.g. on a shared cluster.
MAX_WORKERS_ENV = "LLC_MAX_CHAIN_WORKERS"
# How long a job waits with not one chain worker placed (no free CPUs/GPUs) before it fails UNAVAILABLE.
PLACEMENT_TIMEOUT_ENV = "LLC_PLACEMENT_TIMEOUT_S"


def read_spec(args: argparse.Namespace) -> JobSpec:
    if args.spec:
        try:
            with open(args.spec, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise InvalidArgument(f"--spec {args.spec}: cannot read the job spec file: {exc.strerror}") from None
    else:
        text = os.environ.get("LLC_JOB_SPEC", "")
        if not text:
            raise InvalidArgument("no job spec: set LLC_JOB_SPEC to the JobSpec JSON, or pass --spec FILE")
    return JobSpec.from_json(text)


def connect(args: argparse.Namespace) -> None:
    """Join the job's Ray cluster (RAY_ADDRESS; set by Ray inside a job), or start a private one."""
    import ray

    common = {"logging_level": logging.WARNING, "log_to_driver": False, "configure_logging": False}
    try:
        if args.local:
            os.environ.pop("RAY_ADDRESS", None)
            # "local": always a new cluster; with no address Ray joins the last one started on this machine.
            ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, **common)
        elif os.environ.get("RAY_ADDRESS"):
            require_listening(os.environ["RAY_ADDRESS"])
            ray.init(address=os.environ["RAY_ADDRESS"], **common)
        else:
            raise Unavailable("no Ray cluster: set RAY_ADDRESS (e.g. 127.0.0.1:6379), submit through the Ray "
                              "job API, or pass --local to start a private local Ray")
    except LLCError:
        raise
    except Exception as exc:
        raise Unavailable(f"cannot connect to Ray at {os.environ.get('RAY_ADDRESS', 'a new local cluster')}: "
                          f"{type(exc).__name__}: {exc}; check RAY_ADDRESS and that the cluster is up") from None


def require_listening(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a `host:port` where nothing listens (ray.init would retry for minutes)."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # "auto", ray:// client addresses: let Ray resolve them
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise Unavailable(f"no Ray cluster answers at RAY_ADDRESS={address} ({exc}); start the cluster or fix "
                          "RAY_ADDRESS") from None


def alive_node_resources() -> list[dict[str, float]]:
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


class Job:
    """One run of the driver: turns pool callbacks into events and builds the result."""

    def __init__(self, spec: JobSpec, events: EventWriter, stop: threading.Event):
        from cluster.result_document import base_provenance, utc_now

        self.spec = spec
        self.events = events
        self.stop = stop
        self.provenance = base_provenance(spec, utc_now())
        self.previews: list[dict[str, Any]] | None = None
        self.pool = None
        # A trajectory's later checkpoints (cluster.trajectory): sampler settings resolved at its calibration
        # checkpoint, by restriction index; the pool plans nothing for these.
        self.preset_settings: dict[int, dict[str, Any]] = {}
        self.preset_calibrations: dict[int, dict[str, Any]] = {}

    def run(self) -> dict[str, Any]:
        from cluster.chains import ChainPool
        from cluster.placement import ChainResources, pool_size

        spec = self.spec
        names = [r.name for r in spec.restrictions]
        units = len(names) * spec.sampler.chains
        self.events.emit("started", chains_total=units, restrictions=names, provenance=self.provenance)
        resources = ChainResources.from_compute(spec.compute)  # ranks > 1: ZeRO-3 groups (cluster.sharded)
        workers_needed = -(-units // spec.compute.chains_per_worker)  # each runs up to k chains together
        size = pool_size(resources, alive_node_resources(), workers_needed,
                         int(os.environ.get(MAX_WORKERS_ENV, "0") or 0))
        deadline = time.monotonic() + spec.compute.timeout_s if spec.compute.timeout_s > 0 else None
        self.pool = ChainPool(spec, resources, size, stop=self.stop, deadline=deadline,
                              placement_timeout=float(os.environ.get(PLACEMENT_TIMEOUT_ENV, "300") or 300),
                              on_ready=self._ready, on_progress=self._progress, on_chain=self._chain,
                              settings=self.preset_settings, calibrations=self.preset_calibrations)
        log.info("starting %d chain workers for %d units", size, units)
        self.pool.start()
        self.pool.run()
        doc = self.document()
        if spec.observables is not None:  # merge the workers' parts, BIF and susceptibilities (cluster/observables.py)
            from cluster.observables import finish_artifact

            try:
                doc["observables"] = finish_artifact(spec, self.pool.results)
            except Exception as exc:  # the LLCs stand without it; say why the artifact is missing
                log.exception("observables artifact failed")
                doc["observables"] = {"artifact": spec.job_id, "files": {},
                                      "warnings": [f"the observables artifact failed: {type(exc).__name__}: {exc}"]}
        failed = [(r, c) for (r, c), d in self.pool.results.items() if d.get("status") == "failed"]
        if failed:
            raise ChainsFailed(self._failed_message(failed), doc)
        return doc

    def document(self) -> dict[str, Any]:
        """The result document of what has finished (all of it, or a partial result)."""
        from cluster.result_document import result_document
        from cluster.workers import dataset_key

        pool = self.pool
        keys = [dataset_key(r.dataset or self.spec.dataset) for r in self.spec.restrictions]
        init_losses = [pool.init_losses.get(k) if pool else None for k in keys]
        provenance = dict(self.provenance)
        if pool is not None and pool.summary is not None:
            s = pool.summary
            provenance["model"] = s["model_provenance"]
            by_key = s["dataset_provenance"]
            provenance["dataset"] = by_key.get(dataset_key(self.spec.dataset), {})
            provenance["restriction_datasets"] = {  # data-restricted LLCs: their own data's fingerprint
                r.name: by_key.get(dataset_key(r.dataset), {}) for r in self.spec.restrictions if r.dataset is not None}
            provenance["workers"] = [{k: w[k] for k in ("node_id", "pid", "load_seconds", "threads")}
                                     for w in pool.worker_summaries]
        return result_document(self.spec, pool.results if pool else {}, init_losses, self.previews, provenance,
                               settings=pool.settings if pool else None,
                               calibrations=pool.calibrations if pool else None)

    def _failed_message(self, failed: list[tuple[int, int]]) -> str:
        r, c = failed[0]
        first = self.pool.results[(r, c)]
        done = len(self.pool.results) - len(failed)
        return (f"{len(failed)} chain(s) failed after {self.spec.compute.max_chain_retries + 1} attempts, e.g. chain {c} "
                f"of restriction {self.spec.restrictions[r].name!r}: {first['message']}. The {done} other chains "
                "finished and are in partial_result. Check the Ray nodes' memory and health, or raise "
                "compute.max_chain_retries")

    # -- pool callbacks -> events ------------------------------------------
    def _ready(self, summary: dict[str, Any]) -> None:
        self.previews = summary["preview"]
        self.events.emit("preview", restrictions=self.previews)

    def _progress(self, r: int, c: int, p: dict[str, Any]) -> None:
        self.events.emit("progress", restriction=self.spec.restrictions[r].name, chain=c, **p)

    def _chain(self, report: ChainReport) -> None:
        chain, unit = report.chain or {}, report.unit
        self.events.emit("chain", restriction=self.spec.restrictions[unit.restriction].name, chain=unit.chain,
                         status=report.status, llc=chain.get("llc"), attempt=unit.attempts, message=report.message,
                         node_id=(chain.get("extra") or {}).get("node_id"))


class ChainsFailed(LLCError):
    """Some chains kept failing; the others' results travel with the error."""

    code = "UNAVAILABLE"

    def __init__(self, message: str, partial: dict[str, Any]):
        super().__init__(message)
        self.partial = partial


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.driver", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", help="JobSpec JSON file (default: the LLC_JOB_SPEC environment variable)")
    parser.add_argument("--local", action="store_true", help="start a private local Ray instead of joining one")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the --local Ray (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.warning("received %s: cancelling the job", signal.Signals(signum).name)
        stop.set()

    def handle_stop_signals() -> None:
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return run(args, EventWriter(sys.stdout), stop, handle_stop_signals)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def run(args: argparse.Namespace, events: EventWriter, stop: threading.Event,
        handle_stop_signals: Callable[[], None]) -> int:
    """The job from spec to `result` (0) or `error` (1); `stop` set = cancel."""
    handle_stop_signals()
    job: Job | None = None
    trajectory: dict[str, Any] | None = None
    try:
        spec = read_spec(args)
        connect(args)
        handle_stop_signals()  # ray.init installs its own SIGTERM handler (sys.exit): take it back
        if stop.is_set():
            from cluster.contract.errors import Cancelled

            raise Cancelled("the job was cancelled before its chains started")
        if spec.checkpoints:  # an LLC trajectory: one pool per checkpoint (cluster.trajectory)
            from cluster.trajectory import run_trajectory

            trajectory = {}
            try:
                result = run_trajectory(spec, events, stop, trajectory)
            finally:
                job = trajectory.get("job")
        else:
            job = Job(spec, events, stop)
            result = job.run()
    except BaseException as exc:  # every failure ends in one `error` event naming what to change
        if job is not None and job.pool is not None:
            job.pool.shutdown()  # first: a cancelled job frees its CPUs and GPUs at once
        # A trajectory's partial result is not one checkpoint's.
        code, message, partial = _describe_failure(exc, None if trajectory is not None else job)
        fields: dict[str, Any] = {"code": code, "message": message, "field": getattr(exc, "field", "")}
        if partial is not None and partial["restrictions"]:
            fields["partial_result"] = partial
        events.emit("error", **fields)
        if not isinstance(exc, (LLCError, KeyboardInterrupt, SystemExit)):
            log.exception("driver failed")
        return 1
    events.emit("result", result=result)
    if job is not None and job.pool is not None:
        job.pool.shutdown()
    return 0


def _describe_failure(exc: BaseException, job: Job | None) -> tuple[str, str, dict[str, Any] | None]:
    partial = None
    if isinstance(exc, ChainsFailed):
        partial = exc.partial
    elif job is not None and job.pool is not None and job.pool.results:
        try:
            partial = job.document()
        except Exception:  # the error itself matters more than the partial result
            log.exception("could not build the partial result")
    if isinstance(exc, LLCError):
        return exc.code, exc.message, partial
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):  # SystemExit: Ray's SIGTERM handler during ray.init
        return "CANCELLED", "the job was cancelled", partial
    return "INTERNAL", f"driver failed: {type(exc).__name__}: {exc}", partial


if __name__ == "__main__":
    sys.exit(main())
