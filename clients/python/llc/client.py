"""The SDK entry point: `Client(address, token=...)`."""
from __future__ import annotations

import os
import time
import uuid
from typing import Any, Iterable, Iterator

import grpc

from llc import requests
from llc.errors import EstimateCancelled, EstimateFailed, LLCError, from_rpc_error, transport_hint
from llc.results import Estimate, EstimateResult, Event
from llc.v1 import llc_pb2 as pb
from llc.v1 import llc_pb2_grpc

STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)


class Client:
    """A connection to an LLC server.

    address: host:port. token: bearer token (default $LLC_TOKEN); on a server with tokens it names
    who you are, and you see only your own estimates. tls: use TLS (root_certificates: PEM bytes or a
    path; default the system roots). client_id: on a server without tokens, the label your estimates
    get as their owner (default $LLC_CLIENT_ID or your user name); a server with tokens ignores it.
    """

    def __init__(self, address: str = "127.0.0.1:50051", *, token: str | None = None, tls: bool = False,
                 root_certificates: bytes | str | None = None, client_id: str | None = None, timeout: float = 30.0):
        self.address = address
        self.timeout = timeout
        token = os.environ.get("LLC_TOKEN", "") if token is None else token
        self._metadata = [("llc-client-id", client_id or os.environ.get("LLC_CLIENT_ID") or _user())]
        if token:
            self._metadata.append(("authorization", f"Bearer {token}"))
        options = [("grpc.max_receive_message_length", 256 << 20)]
        self.tls = bool(tls or root_certificates)
        if self.tls:
            roots = root_certificates
            if isinstance(roots, str):
                with open(roots, "rb") as f:
                    roots = f.read()
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(roots), options)
        else:
            self._channel = grpc.insecure_channel(address, options)
        self._stub = llc_pb2_grpc.LLCServiceStub(self._channel)

    # -------------------------------------------------------------- plumbing
    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, method)(request, metadata=self._metadata, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.RpcError) -> LLCError:
        err = from_rpc_error(exc)
        if err.code == "UNAVAILABLE" and "connect" in err.message:
            err.message += f" ({transport_hint(err.message, self.tls, self.address)})"
        return err

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Blocks until the server accepts connections (raises Unavailable after `timeout`)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise LLCError(f"no LLC server answers at {self.address} after {timeout:.0f} s; start one with "
                           "`llc serve` or pass the right address", "UNAVAILABLE") from None

    # -------------------------------------------------------------- estimates
    def submit(self, model: Any = None, dataset: Any = None, *, spec: pb.EstimateSpec | None = None,
               restrictions: Iterable[Any] = (), request_id: str | None = None, **settings: Any) -> Estimate:
        """Starts an estimate and returns at once (state QUEUED). `settings`: batch_size,
        context_length, max_examples, text_column, sampler and compute fields (see llc.requests).
        Retrying with the same `request_id` returns the same estimate."""
        if spec is None:
            if (model is None and not settings.get("checkpoints")) or dataset is None:
                raise ValueError("give model= and dataset= (or checkpoints=, or a complete spec=)")
            spec = requests.estimate_spec(model, dataset, restrictions=restrictions, **settings)
        request = pb.CreateEstimateRequest(request_id=request_id or uuid.uuid4().hex, spec=spec)
        # A dropped connection before the answer is safe to retry: the request id makes it idempotent.
        for attempt in range(3):
            try:
                return Estimate.from_proto(self._call("CreateEstimate", request).estimate)
            except LLCError as exc:
                if exc.code != "UNAVAILABLE" or attempt == 2:
                    raise
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    def get(self, estimate_id: str) -> Estimate:
        return Estimate.from_proto(self._call("GetEstimate", pb.GetEstimateRequest(estimate_id=estimate_id)).estimate)

    def list(self, state: str | Iterable[str] | None = None, page_size: int = 50, limit: int | None = None,
             full: bool = False) -> list[Estimate]:
        """Estimates, newest first; `state` filters (QUEUED, RUNNING, ...); follows pages up to `limit`.
        Summaries (result None, spec only the model and restriction names) unless `full`; `get(id)`
        returns one estimate in full."""
        states = [state] if isinstance(state, str) else list(state or [])
        for s in states:
            if s.upper() not in STATES:
                raise ValueError(f"state must be one of {STATES}, got {s!r}")
        request = pb.ListEstimatesRequest(page_size=page_size,
                                          view=pb.ESTIMATE_VIEW_FULL if full else pb.ESTIMATE_VIEW_SUMMARY,
                                          states=[pb.EstimateState.Value(f"ESTIMATE_STATE_{s.upper()}") for s in states])
        out: list[Estimate] = []
        while True:
            page = self._call("ListEstimates", request)
            out += [Estimate.from_proto(e) for e in page.estimates]
            if not page.next_page_token or (limit is not None and len(out) >= limit):
                return out[:limit] if limit is not None else out
            request.page_token = page.next_page_token

    def cancel(self, estimate_id: str) -> Estimate:
        return Estimate.from_proto(self._call("CancelEstimate", pb.CancelEstimateRequest(estimate_id=estimate_id)).estimate)

    def watch(self, estimate_id: str, *, after_seq: int | None = None, reconnect_for: float = 120.0,
              timeout: float | None = None) -> Iterator[Event]:
        """Yields events in seq order until the estimate ends: the stored events after `after_seq`
        (None: none), a snapshot of the current state, live events and a snapshot on each state change;
        the last one is the terminal snapshot. After a dropped connection (a server restart) it keeps reconnecting for up to
        `reconnect_for` seconds and resumes from the last event seen: nothing is lost."""
        deadline = time.monotonic() + timeout if timeout else None
        last = after_seq
        failures, down_since = 0, 0.0
        while True:
            request = pb.WatchEstimateRequest(estimate_id=estimate_id)
            if last is not None:
                request.after_seq = last
            remaining = None if deadline is None else max(0.1, deadline - time.monotonic())
            try:
                for msg in self._stub.WatchEstimate(request, metadata=self._metadata, timeout=remaining):
                    failures = 0
                    down_since = 0.0
                    event = Event.from_proto(msg)
                    if event.kind != "snapshot":
                        last = event.seq
                    elif last is None:
                        last = event.seq  # resume after what the snapshot covers
                    yield event
                return  # the server ends the stream after the terminal snapshot
            except grpc.RpcError as exc:
                failures += 1
                down_since = down_since or time.monotonic()
                if exc.code() not in _RETRYABLE or time.monotonic() - down_since > reconnect_for:
                    raise self._error(exc) from None
                time.sleep(min(5.0, 0.2 * 2 ** failures))

    def preview(self, model: Any = None, dataset: Any = None, *, spec: pb.EstimateSpec | None = None,
                restrictions: Iterable[Any] = (), timeout: float = 600.0, **settings: Any) -> list[dict[str, Any]]:
        """Which tensors and how many elements each restriction moves, without sampling:
        [{"name", "elements", "tensors": [{"name", "shape", "elements"}]}]. The cluster loads the
        model to answer, so this takes as long as a chain worker's start."""
        from llc.results import message_dict

        if spec is None:
            spec = requests.estimate_spec(model, dataset, restrictions=restrictions, **settings)
        response = self._call("PreviewRestrictions", pb.PreviewRestrictionsRequest(spec=spec), timeout=timeout)
        return [message_dict(r) for r in response.restrictions]

    def fetch_artifact(self, estimate_id: str, file: str = "losses.parquet", *, chunk_bytes: int | None = None,
                       timeout: float | None = 600.0) -> bytes:
        """One file of a finished estimate's observables artifact (FetchArtifact, streamed in chunks)."""
        request = pb.FetchArtifactRequest(estimate_id=estimate_id, file=file)
        if chunk_bytes is not None:
            request.chunk_bytes = chunk_bytes
        parts, total = [], None
        try:
            for chunk in self._stub.FetchArtifact(request, metadata=self._metadata, timeout=timeout):
                parts.append(chunk.data)
                total = chunk.total_bytes
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        data = b"".join(parts)
        if total is not None and len(data) != total:
            raise LLCError(f"artifact {file} of {estimate_id} arrived with {len(data)} of {total} bytes; fetch it again",
                           "UNAVAILABLE")
        return data

    def observables(self, estimate_id: str, files: Iterable[str] | None = None):
        """The estimate's observables artifact (llc.observables.ObservablesArtifact): losses, BIF and
        susceptibilities as pandas DataFrames, per-observable xarray DataArrays."""
        from llc.observables import ObservablesArtifact

        est = self._call("GetEstimate", pb.GetEstimateRequest(estimate_id=estimate_id)).estimate
        names = [f.name for f in est.result.observables.files] if files is None else list(files)
        if not names:
            raise LLCError(f"estimate {estimate_id} has no observables artifact (state "
                           f"{pb.EstimateState.Name(est.state)}): submit with observables= and wait for SUCCEEDED",
                           "FAILED_PRECONDITION")
        return ObservablesArtifact({name: self.fetch_artifact(estimate_id, name) for name in names})

    def wait(self, estimate_id: str, timeout: float | None = None) -> Estimate:
        """Blocks until the estimate ends; returns its final state."""
        final = None
        for event in self.watch(estimate_id, timeout=timeout):
            if event.estimate is not None:
                final = event.estimate
        return final if final is not None and final.is_terminal else self.get(estimate_id)

    def estimate(self, model: Any = None, dataset: Any = None, *, progress: bool = True, timeout: float | None = None,
                 **kwargs: Any) -> EstimateResult:
        """Submits, shows a live progress bar, and returns the result; raises EstimateFailed
        (or EstimateCancelled) if the estimate does not succeed."""
        from llc.progress import ProgressBar

        est = self.submit(model, dataset, **kwargs)
        bar = ProgressBar(est.id, enabled=progress)
        final = est
        try:
            for event in self.watch(est.id, timeout=timeout):
                bar.update(event)
                if event.estimate is not None:
                    final = event.estimate
        finally:
            bar.close()
        return raise_for_state(final)


def raise_for_state(est: Estimate) -> EstimateResult:
    """The result of a succeeded estimate; EstimateFailed/EstimateCancelled otherwise."""
    if est.state == "SUCCEEDED" and est.result is not None:
        return est.result
    if est.state == "CANCELLED":
        raise EstimateCancelled(f"estimate {est.id} was cancelled: {est.error_message}", "CANCELLED", est)
    if est.state == "FAILED":
        raise EstimateFailed(f"estimate {est.id} failed: {est.error_message}", est.error_code or "INTERNAL", est)
    raise EstimateFailed(f"estimate {est.id} has not finished (state {est.state})", "DEADLINE_EXCEEDED", est)


def _user() -> str:
    try:
        import getpass

        name = getpass.getuser()
    except Exception:  # no user database (containers)
        name = "anonymous"
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in name)[:64] or "anonymous"
