"""Typed views of llc.v1 messages: estimates, results, events. Convert to dicts, JSON,
pandas DataFrames (optional) and plots (optional)."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from llc import enums
from llc.v1 import llc_pb2 as pb

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")


def _state_name(enum, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix)


def _jsonable(x: Any) -> Any:
    """NaN/inf → None: JSON has no NaN (a diverged chain's λ̂ is NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _struct(msg) -> dict[str, Any]:
    return json_format.MessageToDict(msg)


class _Doc:
    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def _proto_fields(m) -> dict[str, Any]:
    """Every field of a flat message by name: repeated fields as lists, enums by short name."""
    out: dict[str, Any] = {}
    for f in m.DESCRIPTOR.fields:
        value = getattr(m, f.name)
        if f.enum_type is not None:
            value = f.enum_type.values_by_number[value].name.removeprefix(enums.prefix(f.enum_type.name))
        out[f.name] = list(value) if f.is_repeated else value
    return out


@dataclass
class Chain(_Doc):
    chain: int
    seed: int
    llc: float
    state: str  # SUCCEEDED, DIVERGED, FAILED
    loss_trace: list[float]
    mala_acceptance: float
    frac_below_init: float
    steps: int
    message: str
    attempts: int
    gradient_noise: float = math.nan
    equipartition: float = math.nan

    @classmethod
    def from_proto(cls, m: pb.Chain) -> "Chain":
        return cls(**_proto_fields(m))


@dataclass
class Diagnostics(_Doc):
    """The proto's Diagnostics field for field (tests/contract/test_parity.py keeps them equal)."""

    rhat: float
    ess: float
    mala_acceptance: float
    frac_below_init: float
    diverged_chains: list[int]
    ess_tail: float = math.nan
    trend_t: float = math.nan
    llc_sem: float = math.nan
    llc_half_width: float = math.nan
    gradient_noise: float = math.nan
    equipartition: float = math.nan
    failed_chains: list[int] = field(default_factory=list)
    init_loss_offset: float = math.nan
    init_loss_offset_se: float = math.nan

    @classmethod
    def from_proto(cls, m: pb.Diagnostics) -> "Diagnostics":
        return cls(**_proto_fields(m))


@dataclass
class RestrictionResult(_Doc):
    name: str
    llc_mean: float
    llc_std: float
    llc_per_chain: list[float]
    init_loss: float
    diagnostics: Diagnostics
    warnings: list[str]
    chains: list[Chain]
    moved_tensors: list[dict[str, Any]]
    moved_elements: int
    config: dict[str, Any]
    # how the automatic settings were chosen: pilots (step_size, llc, mala_acceptance, gradient_noise,
    # trend_t, verdict, why, chosen), step_size(_reason), burn_in(_reason), nbeta(_source), cost_fraction ...
    calibration: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, m: pb.RestrictionResult) -> "RestrictionResult":
        d = m.diagnostics
        return cls(m.name, m.llc_mean, m.llc_std, list(m.llc_per_chain), m.init_loss,
                   Diagnostics.from_proto(d),
                   list(m.warnings), [Chain.from_proto(c) for c in m.chains],
                   [{"name": t.name, "shape": list(t.shape), "elements": t.elements} for t in m.moved_tensors],
                   m.moved_elements, settings_dict(m.sampler), message_dict(m.calibration))

    @property
    def loss_traces(self) -> list[list[float]]:
        """One per chain, in chain order (each trace travels once, in its chain)."""
        return [c.loss_trace for c in self.chains]


@dataclass
class EstimateResult(_Doc):
    restrictions: list[RestrictionResult]
    provenance: dict[str, Any]
    warnings: list[str]
    # LLC trajectories (spec.checkpoints; llc.trajectories): per-checkpoint results, λ̂(t) per restriction with
    # stage boundaries, how those were found, where settings were calibrated, units answered from the cache.
    checkpoints: list[Any] = field(default_factory=list)
    trajectories: list[Any] = field(default_factory=list)
    stage_detection: dict[str, Any] = field(default_factory=dict)
    calibration_checkpoint: dict[str, Any] = field(default_factory=dict)
    cached_units: list[tuple[int, str]] = field(default_factory=list)
    # Observables (llc.observables): artifact files, examples per observable, BIF/susceptibility means;
    # the losses themselves: Client.observables(id).
    observables: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, m: pb.EstimateResult) -> "EstimateResult":
        out = cls([RestrictionResult.from_proto(r) for r in m.restrictions], _struct(m.provenance), list(m.warnings))
        if m.checkpoints:
            from llc.trajectories import CheckpointResult, Trajectory

            out.checkpoints = [CheckpointResult.from_proto(c) for c in m.checkpoints]
            out.trajectories = [Trajectory.from_proto(t) for t in m.trajectories]
            out.stage_detection, out.calibration_checkpoint = _struct(m.stage_detection), _struct(m.calibration_checkpoint)
            out.cached_units = [(u.step, u.restriction) for u in m.cached_units]
        if m.HasField("observables"):
            from google.protobuf import json_format

            obs = json_format.MessageToDict(m.observables, preserving_proto_field_name=True)
            obs["values"] = int(obs.get("values", 0))  # int64s come back as text
            obs["files"] = {f["name"]: int(f.get("bytes", 0)) for f in obs.get("files", [])}
            out.observables = obs
        return out

    @property
    def is_trajectory(self) -> bool:
        return bool(self.checkpoints)

    def trajectory(self, restriction: str) -> Any:
        """λ̂(t) of one restriction (llc.trajectories.Trajectory)."""
        for t in self.trajectories:
            if t.restriction == restriction:
                return t
        raise KeyError(f"no trajectory of {restriction!r}; have {[t.restriction for t in self.trajectories]}")

    def plot_trajectories(self, path: str, **kwargs: Any) -> str:
        """PNG of λ̂(t) per restriction, log-t axis, error bands, stage boundaries shaded."""
        from llc.plots import plot_trajectories

        return plot_trajectories(self, path, **kwargs)

    def __getitem__(self, name: str) -> RestrictionResult:
        for r in self.restrictions:
            if r.name == name:
                return r
        raise KeyError(f"no restriction {name!r}; have {[r.name for r in self.restrictions]}")

    def rows(self) -> list[dict[str, Any]]:
        """One row per restriction (a trajectory: per checkpoint × restriction): the numbers people put in a table."""
        if self.checkpoints:
            from llc.trajectories import rows

            return rows(self)
        return [{"restriction": r.name, "llc_mean": r.llc_mean, "llc_std": r.llc_std, "chains": len(r.llc_per_chain),
                 "diverged": len(r.diagnostics.diverged_chains), "init_loss": r.init_loss, "rhat": r.diagnostics.rhat,
                 "ess": r.diagnostics.ess, "mala_acceptance": r.diagnostics.mala_acceptance,
                 "moved_elements": r.moved_elements} for r in self.restrictions]

    def table(self) -> str:
        """A plain-text table (no pandas needed)."""
        if self.checkpoints:
            from llc.trajectories import table

            return table(self)
        cols = ["restriction", "llc_mean", "llc_std", "chains", "diverged", "init_loss", "rhat", "mala_acceptance",
                "moved_elements"]
        fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
        cells = [cols] + [[fmt(row[c]) for c in cols] for row in self.rows()]
        widths = [max(len(r[i]) for r in cells) for i in range(len(cols))]
        lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        notes = [f"warning: {w}" for w in self.warnings]
        notes += [f"warning [{r.name}]: {w}" for r in self.restrictions for w in r.warnings]
        return "\n".join(lines + notes)

    def calibration_table(self) -> str:
        """Each restriction's pilots (ε, λ̂, MALA, gradient noise τ, trend t, verdict) and the chosen settings."""
        lines = []
        fmt = lambda v, spec: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)  # noqa: E731
        for r in self.restrictions:
            c = r.calibration or {}
            if not c.get("pilots") and not c.get("nbeta"):
                continue
            lines.append(f"calibration [{r.name}]: nβ = {fmt(c.get('nbeta'), '.4g')} ({c.get('nbeta_source') or '-'}, "
                         f"n = {c.get('sample_size') or '-'}), ε = {fmt(c.get('step_size'), '.3g')}, "
                         f"burn-in {c.get('burn_in', 0)}; pilots cost {fmt(c.get('cost_fraction'), '.0%')} of the main run")
            if c.get("step_size_reason"):
                lines.append(f"  why ε: {c['step_size_reason']}")
            if c.get("pilots"):
                lines.append(f"  {'ε':>10} {'λ̂':>10} {'MALA':>6} {'τ':>7} {'trend t':>8}  verdict")
            for p in c.get("pilots") or []:
                lines.append(f"  {fmt(p['step_size'], '10.3g')} {fmt(p['llc'], '10.4g')} {fmt(p['mala_acceptance'], '6.2f')}"
                             f" {fmt(p['gradient_noise'], '7.3f')} {fmt(p['trend_t'], '8.1f')}  {p['verdict']}"
                             f"{' ← chosen' if p.get('chosen') else ''}")
        return "\n".join(lines)

    def plot_calibration(self, path: str) -> str:
        from llc.plots import plot_calibration

        return plot_calibration(self, path)

    def to_dataframe(self):
        """A pandas DataFrame, one row per restriction, or per checkpoint × restriction for a trajectory
        (needs pandas: pip install 'llc-client[pandas]')."""
        return _pandas().DataFrame(self.rows())

    def chains_dataframe(self):
        """One row per (restriction, chain)."""
        return _pandas().DataFrame([{"restriction": r.name, **{k: v for k, v in dataclasses.asdict(c).items()
                                                                 if k != "loss_trace"}}
                                    for r in self.restrictions for c in r.chains])

    def plot_loss_traces(self, path: str) -> str:
        from llc.plots import plot_loss_traces

        return plot_loss_traces(self, path)

    def plot_llc(self, path: str) -> str:
        from llc.plots import plot_llc

        return plot_llc(self, path)


@dataclass
class Progress(_Doc):
    chains_total: int = 0
    chains_finished: int = 0
    steps_done: int = 0
    steps_total: int = 0
    fraction: float = 0.0
    llc_running: dict[str, float] = field(default_factory=dict)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # a trajectory's: step, chains_total, ...


@dataclass
class Estimate(_Doc):
    id: str
    state: str  # QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED
    request_id: str
    owner: str
    spec: dict[str, Any]
    create_time: str
    start_time: str
    end_time: str
    progress: Progress
    result: EstimateResult | None
    error_code: str
    error_message: str
    last_seq: int
    ray_submission_id: str

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_proto(cls, m: pb.Estimate) -> "Estimate":
        p = m.progress
        ts = lambda t: t.ToJsonString() if t.seconds or t.nanos else ""  # noqa: E731
        return cls(m.estimate_id, _state_name(pb.EstimateState, m.state, "ESTIMATE_STATE_"), m.request_id, m.owner,
                   _struct(m.spec), ts(m.create_time), ts(m.start_time), ts(m.end_time),
                   Progress(p.chains_total, p.chains_finished, p.steps_done, p.steps_total, p.fraction,
                            {r.restriction: r.llc_running for r in p.restrictions},
                            [_proto_fields(c) for c in p.checkpoints]),
                   EstimateResult.from_proto(m.result) if m.HasField("result") else None,
                   m.error.code, m.error.message, m.last_seq, m.ray_submission_id)


@dataclass
class Event(_Doc):
    """One WatchEstimate message: `kind` is snapshot, started, progress, chain or preview."""

    seq: int
    kind: str
    time: str
    data: dict[str, Any]
    estimate: Estimate | None = None  # for snapshots

    @classmethod
    def from_proto(cls, m: pb.WatchEstimateResponse) -> "Event":
        kind = m.WhichOneof("event") or ""
        t = m.time.ToJsonString() if m.time.seconds else ""
        if kind == "snapshot":
            est = Estimate.from_proto(m.snapshot)
            return cls(m.seq, kind, t, {"state": est.state}, est)
        return cls(m.seq, kind, t, message_dict(getattr(m, kind)) if kind else {})


def settings_dict(msg) -> dict[str, Any]:
    """The fields a message sets, enums by their short names (SamplerSettings → the sampler dict)."""
    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        if fd.enum_type is not None:
            number = getattr(msg, fd.name)
            if number:
                out[fd.name] = fd.enum_type.values_by_number[number].name.removeprefix(
                    enums.prefix(fd.enum_type.name)).lower() if number in fd.enum_type.values_by_number else number
        elif msg.HasField(fd.name):
            out[fd.name] = getattr(msg, fd.name)
    return out


def message_dict(msg) -> dict[str, Any]:
    """Every field with its Python value (MessageToDict would turn int64s into strings)."""
    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        value = getattr(msg, fd.name)
        repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
        if fd.message_type is not None:
            out[fd.name] = [message_dict(v) for v in value] if repeated else message_dict(value)
        elif fd.enum_type is not None:
            names = lambda v: fd.enum_type.values_by_number[v].name if v in fd.enum_type.values_by_number else v  # noqa: E731
            out[fd.name] = [names(v) for v in value] if repeated else names(value)
        else:
            out[fd.name] = list(value) if repeated else value
    return out


def _pandas():
    try:
        import pandas
    except ImportError:
        raise ImportError("to_dataframe needs pandas: pip install 'llc-client[pandas]'") from None
    return pandas
