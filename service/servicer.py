"""The llc.v1.LLCService implementation. Raises domain errors; the error interceptor maps them."""
from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from typing import AsyncIterator

import grpc
from llc.v1 import llc_pb2 as pb
from llc.v1 import llc_pb2_grpc

from cluster.contract.errors import (DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted,
                            Unauthenticated, Unavailable)
from cluster.contract.spec import JobSpec
from service import convert
from service import observables as observables_mod
from service import job_progress as progress_mod
from service.config import ServerConfig
from service.identity import Principal
from service.notify import JobNotifier
from service.policy import SubmissionPolicy
from service.runner import RayJobRunner
from service.store import JobRecord, JobStore
from service.store.base import too_many_active


EVENT_PAGE = 1000  # events read from the store per query by a watch


def fingerprint(spec: dict) -> str:
    """Identifies a request's content (everything but the server-chosen job id)."""
    body = {k: v for k, v in spec.items() if k != "job_id"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class LLCServicer(llc_pb2_grpc.LLCServiceServicer):
    def __init__(self, config: ServerConfig, store: JobStore, runner: RayJobRunner, notifier: JobNotifier):
        self.config, self.store, self.runner, self.notifier = config, store, runner, notifier
        self.policy = SubmissionPolicy(config)

    # -------------------------------------------------------------- helpers
    def _principal(self, context: grpc.aio.ServicerContext) -> Principal:
        principal = self.config.auth.principal(context.invocation_metadata())
        if principal is None:  # the AuthInterceptor refuses these first
            raise Unauthenticated("missing or wrong bearer token")
        return principal

    async def _job(self, estimate_id: str, principal: Principal) -> JobRecord:
        """The estimate if `principal` may see it; another principal's is NOT_FOUND, word for word
        as a missing one, so ids of others' estimates cannot be probed."""
        if not estimate_id:
            raise InvalidArgument("estimate_id is empty; pass the id CreateEstimate returned (see ListEstimates)")
        if len(estimate_id) > 128:  # ids are at most 128 characters (cluster.contract.spec.NAME_RE)
            raise InvalidArgument(f"estimate_id is {len(estimate_id)} characters; ids CreateEstimate returns are "
                                  "at most 128")
        rec = await asyncio.to_thread(self.store.get, estimate_id)
        if rec is None or not principal.sees(rec.owner):
            raise NotFound(f"no estimate {estimate_id!r}; list existing ones with ListEstimates (`llc jobs`)")
        return rec

    def _check_limits(self, spec: JobSpec) -> None:
        c = self.config
        chains, draws, n = spec.sampler.chains, spec.sampler.draws, len(spec.restrictions)
        if chains > c.max_chains:
            raise InvalidArgument(f"spec.sampler.chains: {chains} is more than this server allows ({c.max_chains}); "
                                  "lower it or start the server with a higher --max-chains")
        if n > c.max_restrictions:
            raise InvalidArgument(f"spec.restrictions: {n} restrictions is more than this server allows "
                                  f"({c.max_restrictions}); split them over several estimates")
        if draws * chains * n > c.max_total_draws:
            raise InvalidArgument(f"spec.sampler.draws: draws x chains x restrictions = {draws} x {chains} x {n} = "
                                  f"{draws * chains * n} is more than this server allows ({c.max_total_draws}); "
                                  "lower draws or chains, or raise --max-total-draws")
        observables_mod.check_size(spec, c.max_observable_values, c.results_dir)

    # -------------------------------------------------------------- RPCs
    async def CreateEstimate(self, request: pb.CreateEstimateRequest, context: grpc.aio.ServicerContext):
        size = request.ByteSize()
        if size > self.config.max_request_bytes:
            raise ResourceExhausted(f"the request is {size} bytes; this server accepts at most "
                                    f"{self.config.max_request_bytes} (--max-request-bytes): list fewer files or restrictions")
        owner = self._principal(context).name
        if not request.HasField("spec"):
            raise InvalidArgument("spec is missing: give at least spec.model and spec.dataset")
        job_id = "est-" + uuid.uuid4().hex[:16]
        spec = JobSpec.from_dict(convert.spec_to_dict(request.spec, job_id))
        spec_dict = spec.to_dict()
        fp = fingerprint(spec_dict)
        if request.request_id:
            if len(request.request_id) > 128:
                raise InvalidArgument("request_id is longer than 128 characters; use a UUID")
            existing = await asyncio.to_thread(self.store.find_by_request, owner, request.request_id)
            if existing is not None:
                return self._existing(existing, fp, request.request_id)
        self._check_limits(spec)
        await asyncio.to_thread(self.policy.admit, spec, request.spec)  # reads config.json and a few rows
        spec_dict = spec.to_dict()  # with the server's defaults and resolved paths
        limit = self.config.max_active_per_client
        active = await asyncio.to_thread(self.store.count_active, owner)
        if active >= limit:  # early, before Ray is asked; the store enforces it atomically below
            raise too_many_active(owner, active, limit)
        await self.runner.ensure_available()
        # Shielded: a client deadline that cancels this handler leaves either nothing or a
        # stored and started job, never a stored job nobody runs.
        rec, created = await asyncio.shield(self._store_and_start(JobRecord(
            id=job_id, owner=owner, request_id=request.request_id, fingerprint=fp,
            spec_json=json.dumps(spec_dict, sort_keys=True),
            progress_json=json.dumps(progress_mod.initial(spec_dict))), limit))
        if not created:
            return self._existing(rec, fp, request.request_id)
        return pb.CreateEstimateResponse(estimate=convert.estimate_to_proto(rec), created=True)

    async def _store_and_start(self, record: JobRecord, limit: int) -> tuple[JobRecord, bool]:
        rec, created = await asyncio.to_thread(self.store.create, record, max_active=limit)
        if created:
            self.runner.start(rec.id)
        return rec, created

    def _existing(self, rec: JobRecord, fp: str, request_id: str) -> pb.CreateEstimateResponse:
        if rec.fingerprint != fp:
            raise FailedPrecondition(f"request_id {request_id!r} was already used for estimate {rec.id} with a "
                                     "different spec; use a new request_id for a new estimate")
        return pb.CreateEstimateResponse(estimate=convert.estimate_to_proto(rec), created=False)

    async def GetEstimate(self, request: pb.GetEstimateRequest, context):
        rec = await self._job(request.estimate_id, self._principal(context))
        return pb.GetEstimateResponse(estimate=convert.estimate_to_proto(rec))

    async def ListEstimates(self, request: pb.ListEstimatesRequest, context):
        size = request.page_size or 50
        if not 1 <= size <= self.config.max_page_size:
            raise InvalidArgument(f"page_size must be in [1, {self.config.max_page_size}] (0 = 50), got {request.page_size}")
        states = []
        for s in request.states:
            if s not in convert.PROTO_JOB_STATES:
                raise InvalidArgument(f"states: {s} is not an estimate state; use QUEUED, RUNNING, SUCCEEDED, "
                                      "FAILED or CANCELLED")
            states.append(convert.PROTO_JOB_STATES[s])
        if request.view not in (pb.ESTIMATE_VIEW_UNSPECIFIED, pb.ESTIMATE_VIEW_SUMMARY, pb.ESTIMATE_VIEW_FULL):
            raise InvalidArgument(f"view: {request.view} is not an estimate view; use ESTIMATE_VIEW_SUMMARY (the "
                                  "default) or ESTIMATE_VIEW_FULL")
        principal = self._principal(context)
        records, token = await asyncio.to_thread(
            self.store.list, states=states, owner=None if principal.admin else principal.name, page_size=size,
            page_token=request.page_token)
        to_proto = convert.estimate_to_proto if request.view == pb.ESTIMATE_VIEW_FULL else convert.estimate_summary
        return pb.ListEstimatesResponse(estimates=[to_proto(r) for r in records], next_page_token=token)

    async def CancelEstimate(self, request: pb.CancelEstimateRequest, context):
        principal = self._principal(context)
        rec = await self._job(request.estimate_id, principal)
        if rec.state.is_terminal:
            raise FailedPrecondition(f"estimate {rec.id} already ended ({rec.state.value}); there is nothing to cancel")
        done = await self.runner.cancel(rec, reason=f"cancelled by {principal.name!r}")
        rec = await self._job(rec.id, principal)
        if done is None and rec.state.value != "CANCELLED":
            raise FailedPrecondition(f"estimate {rec.id} ended ({rec.state.value}) before it could be cancelled")
        return pb.CancelEstimateResponse(estimate=convert.estimate_to_proto(rec))

    async def WatchEstimate(self, request: pb.WatchEstimateRequest, context) -> AsyncIterator[pb.WatchEstimateResponse]:
        principal = self._principal(context)
        rec = await self._job(request.estimate_id, principal)
        after = request.after_seq if request.HasField("after_seq") else rec.last_seq
        if after < -1:
            raise InvalidArgument(f"after_seq must be >= -1 (-1 = from the first event), got {after}")
        # seq never decreases along the stream: stored events first (in seq order), then a snapshot
        # whose seq is the last event it reflects; the terminal snapshot comes last, after every event.
        sent_state, unsent = None, False
        while True:
            wake = self.notifier.waiter(rec.id)
            rec = await self._job(rec.id, principal)  # the state before the events: every event behind it is sent below
            while True:  # in pages, so a long history neither loads at once nor gets cut off
                page = await asyncio.to_thread(self.store.events, rec.id, after, limit=EVENT_PAGE)
                for stored in page:
                    after = stored.seq
                    msg = convert.event_to_proto(stored)
                    if msg is not None:
                        yield msg
                        unsent = True
                if len(page) < EVENT_PAGE:
                    break
            if rec.state != sent_state or (rec.state.is_terminal and unsent):
                yield pb.WatchEstimateResponse(seq=max(after, rec.last_seq), snapshot=convert.estimate_to_proto(rec))
                sent_state, unsent = rec.state, False
            if rec.state.is_terminal:
                return
            await self.notifier.wait(wake, self.config.watch_poll_s)
            if self.notifier.closing:
                raise Unavailable(f"the server is restarting; watch again with after_seq={after} to resume "
                                  "(llc.Client.watch does this by itself)")

    async def FetchArtifact(self, request: pb.FetchArtifactRequest, context) -> AsyncIterator[pb.ArtifactChunk]:
        rec = await self._job(request.estimate_id, self._principal(context))  # owner check as GetEstimate
        path = observables_mod.artifact_path(self.config.results_dir, rec.id, rec.result, request.file)
        reader = observables_mod.chunks(path, request.file or "losses.parquet", request.chunk_bytes)
        while (chunk := await asyncio.to_thread(next, reader, None)) is not None:
            yield chunk

    async def PreviewRestrictions(self, request: pb.PreviewRestrictionsRequest, context):
        if not request.HasField("spec"):
            raise InvalidArgument("spec is missing: give at least spec.model and spec.dataset")
        preview_id = uuid.uuid4().hex[:16]
        spec = JobSpec.from_dict(convert.spec_to_dict(request.spec, f"preview-{preview_id}"))
        self._check_limits(spec)
        await asyncio.to_thread(self.policy.admit, spec, request.spec)
        await self.runner.ensure_available()
        # The driver reports the preview once its workers loaded the model: one short chain suffices.
        spec.sampler = spec.sampler.replace(chains=1, burn_in=0, draws=1, steps_between_draws=1)
        try:  # the runner stops the preview's Ray job however this ends
            restrictions = await asyncio.wait_for(self.runner.preview(spec.to_json(), preview_id),
                                                  self.config.preview_timeout_s)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"the preview took longer than this server allows ({self.config.preview_timeout_s:g} "
                                   "s, --preview-timeout): the cluster may be busy or the model slow to load; retry "
                                   "later, or submit the estimate, whose first event is the same preview") from None
        return pb.PreviewRestrictionsResponse(restrictions=[convert.preview_from_dict(r) for r in restrictions])
