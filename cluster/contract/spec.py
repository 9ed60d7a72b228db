"""The job spec: what the front end submits and the Ray driver runs.

This is the contract between `service/` and `cluster/`: a plain JSON document,
validated here (pure Python, no torch) by both sides. The front end converts an
llc.v1 CreateEstimateRequest into a JobSpec; the driver reads it back from the
LLC_JOB_SPEC environment variable.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

import re2

from cluster.contract.sampler import SamplerConfig
from cluster.contract.errors import InvalidField

MODEL_DTYPES = ("auto", "float32", "bfloat16", "float16")
FILE_FORMATS = ("json", "jsonl", "parquet", "text", "csv")
SELECTOR_KINDS = ("pattern", "regex", "layer", "head", "attention", "mlp", "embedding", "unembedding", "all")
NAME_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
# Length caps on what a client sends: a value longer than these is a mistake or an attack, and is
# refused before it reaches a file system, the hub or an error message.
MAX_TEXT = 256  # hub ids, revisions, configs, splits, column names
MAX_PATH = 4096  # local paths (Linux PATH_MAX)
MAX_FILES = 1024  # dataset files (or globs) of one dataset
MAX_PATTERN = 1024  # a pattern or regex selector
# Set to "1" in a job's environment by a front end that allows ModelRef.trust_remote_code: the model
# repository's own Python then runs in the driver and workers (cluster.models refuses it otherwise).
REMOTE_CODE_ENV = "LLC_ALLOW_REMOTE_CODE"


def shown(value: Any, limit: int = 80) -> str:
    """repr of a client's value for an error message, cut to about `limit` characters."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, (str, bytes)) else f"{len(text)} characters as text"
    return f"{text[:limit]}... ({size})"


def compile_regex(pattern: str, field: str = "pattern"):
    """`pattern` compiled by RE2, whose matching is linear in the name's length (no pattern can
    make it backtrack for ever); RE2 has no look-arounds or back-references."""
    _require(len(pattern) <= MAX_PATTERN, field, f"is {len(pattern)} characters; at most {MAX_PATTERN} are allowed")
    options = re2.Options()
    options.log_errors = False
    options.max_mem = 8 << 20  # a pattern whose automaton needs more is refused, not built
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise SpecError(field, f"invalid regular expression {shown(pattern)}: {detail} (RE2 syntax: no look-arounds "
                               "or back-references)") from None


def _short(value: Any, field: str, limit: int = MAX_TEXT) -> None:
    _require(isinstance(value, str), field, f"must be a string, got {type(value).__name__}")
    _require(len(value) <= limit, field, f"is {len(value)} characters; at most {limit} are allowed")


# An invalid job spec; `field` is a path such as `restrictions[1].weights[0].head`.
SpecError = InvalidField


def _require(cond: bool, field: str, message: str) -> None:
    if not cond:
        raise SpecError(field, message)


def _from_dict(cls, data: Any, path: str):
    _require(isinstance(data, dict), path, f"must be an object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    _require(not unknown, f"{path}.{unknown[0] if unknown else ''}", f"unknown field; allowed: {sorted(known)}")
    return known


def _flat(cls, data: Any, path: str):
    """A part whose fields are all plain values, validated once as it is built."""
    _from_dict(cls, data, path)
    part = cls(**data)
    part.validate(path)
    return part


@dataclass
class ModelRef:
    """A Hugging Face hub id (with revision) or a local directory of safetensors."""

    hub_id: str = ""
    revision: str = ""  # branch, tag or commit; empty = the hub's default branch
    local_path: str = ""
    dtype: str = "float32"  # dtype the weights are loaded in
    trust_remote_code: bool = False

    def validate(self, path: str = "model") -> None:
        for name in ("hub_id", "revision"):
            _short(getattr(self, name), f"{path}.{name}")
        _short(self.local_path, f"{path}.local_path", MAX_PATH)
        _require(bool(self.hub_id) != bool(self.local_path), path,
                 "give exactly one of hub_id (e.g. 'EleutherAI/pythia-14m') or local_path")
        if self.hub_id:
            _require(re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?", self.hub_id) is not None, f"{path}.hub_id",
                     f"{shown(self.hub_id)} is not a hub id of the form 'owner/name'")
        _require(self.dtype in MODEL_DTYPES, f"{path}.dtype", f"must be one of {MODEL_DTYPES}, got {shown(self.dtype)}")

    @classmethod
    def from_dict(cls, data: Any, path: str = "model", *, validate: bool = True) -> "ModelRef":
        _from_dict(cls, data, path)
        ref = cls(**data)
        if validate:  # a trajectory's model may name no source (JobSpec.validate checks its checkpoints)
            ref.validate(path)
        return ref


@dataclass
class DatasetRef:
    """A hub dataset (id, config, split, column) or local files; tokenized to fixed-length rows."""

    hub_id: str = ""
    config: str = ""
    split: str = "train"
    revision: str = ""
    files: list[str] = field(default_factory=list)
    file_format: str = ""  # inferred from the extension when empty
    text_column: str = "text"
    input_ids_column: str = ""  # pre-tokenized rows: used instead of text_column
    context_length: int = 128
    max_examples: int = 0  # 0: no limit
    shuffle_seed: int = 0
    packing: bool = True  # True: concatenate and cut into context_length rows; False: truncate each text

    def validate(self, path: str = "dataset") -> None:
        for name in ("hub_id", "config", "split", "revision", "file_format", "text_column", "input_ids_column"):
            _short(getattr(self, name), f"{path}.{name}")
        _require(isinstance(self.files, list) and len(self.files) <= MAX_FILES, f"{path}.files",
                 f"give at most {MAX_FILES} files or globs")
        for i, f in enumerate(self.files):
            _short(f, f"{path}.files[{i}]", MAX_PATH)
        _require(bool(self.hub_id) != bool(self.files), path,
                 "give exactly one of hub_id (e.g. 'NeelNanda/pile-10k') or files (local jsonl/parquet/text)")
        if self.file_format:
            _require(self.file_format in FILE_FORMATS, f"{path}.file_format",
                     f"must be one of {FILE_FORMATS}, got {shown(self.file_format)}")
        _require(isinstance(self.context_length, int) and 2 <= self.context_length <= 1_048_576,
                 f"{path}.context_length", f"must be an integer in [2, 1048576], got {self.context_length!r}")
        _require(isinstance(self.max_examples, int) and 0 <= self.max_examples <= 100_000_000,
                 f"{path}.max_examples", f"must be an integer in [0, 1e8] (0 = all), got {self.max_examples!r}")
        _require(isinstance(self.shuffle_seed, int) and self.shuffle_seed >= 0, f"{path}.shuffle_seed",
                 f"must be a non-negative integer, got {self.shuffle_seed!r}")
        _require(bool(self.text_column or self.input_ids_column), f"{path}.text_column",
                 "name the text column (or input_ids_column for pre-tokenized data)")

    @classmethod
    def from_dict(cls, data: Any, path: str = "dataset") -> "DatasetRef":
        return _flat(cls, data, path)


@dataclass
class WeightSelector:
    """Selects weights: by name (`pattern` glob or `regex`), or semantically
    (`layer` i, `head` (i, h), `attention` of layer i, `mlp` of layer i,
    `embedding`, `unembedding`, `all`)."""

    kind: str = "pattern"
    pattern: str = ""
    layer: int = -1
    head: int = -1

    def validate(self, path: str) -> None:
        _require(self.kind in SELECTOR_KINDS, f"{path}.kind", f"must be one of {SELECTOR_KINDS}, got {shown(self.kind)}")
        _short(self.pattern, f"{path}.pattern", MAX_PATTERN)
        if self.kind in ("pattern", "regex"):
            _require(bool(self.pattern), f"{path}.pattern", f"a {self.kind} selector needs a pattern, e.g. 'gpt_neox.layers.0.*'")
        if self.kind == "regex":
            compile_regex(self.pattern, f"{path}.pattern")
        if self.kind in ("layer", "head", "attention", "mlp"):
            _require(isinstance(self.layer, int) and self.layer >= 0, f"{path}.layer",
                     f"a {self.kind} selector needs layer >= 0, got {self.layer!r}")
        if self.kind == "head":
            _require(isinstance(self.head, int) and self.head >= 0, f"{path}.head",
                     f"a head selector needs head >= 0, got {self.head!r}")

    @classmethod
    def from_dict(cls, data: Any, path: str) -> "WeightSelector":
        return _flat(cls, data, path)


@dataclass
class Restriction:
    """A named LLC measurement: which weights move (empty = all) and on which data
    (None = the job's dataset)."""

    name: str = "full"
    weights: list[WeightSelector] = field(default_factory=list)
    dataset: DatasetRef | None = None

    def validate(self, path: str) -> None:
        _require(isinstance(self.name, str) and NAME_RE.match(self.name) is not None, f"{path}.name",
                 f"must be 1-128 characters of letters, digits, '_', '.', ':' or '-', got {shown(self.name)}")

    @classmethod
    def from_dict(cls, data: Any, path: str) -> "Restriction":
        _from_dict(cls, data, path)
        weights = data.get("weights") or []
        _require(isinstance(weights, list), f"{path}.weights", "must be a list of selectors")
        ds = data.get("dataset")
        r = cls(
            name=data.get("name", "full"),
            weights=[WeightSelector.from_dict(w, f"{path}.weights[{i}]") for i, w in enumerate(weights)],
            dataset=DatasetRef.from_dict(ds, f"{path}.dataset") if ds else None,
        )
        r.validate(path)
        return r


@dataclass
class ComputeSpec:
    """Resources per chain and fault handling."""

    gpus_per_chain: float = 0.0  # 0: CPU only; a fraction lets chains share a GPU; >1 must be whole (ZeRO-3)
    cpus_per_chain: float = 1.0
    max_chain_retries: int = 2
    timeout_s: float = 0.0  # 0: none; a front end fills in its default_timeout_s (service/config.py)
    # DeepSpeed ZeRO-3 ranks of one chain: g > 1 GPUs mean g ranks; on CPUs (g = 0) a value > 1 runs gloo ranks.
    ranks_per_chain: int = 1
    zero_stage: int = 3  # of sharded chains; stages 1-2 keep whole weights on every rank, which saves nothing here
    lean_memory: bool = False  # bf16 weights + fp32 drift w - w* (cluster.engine.lean), single-process chains
    # Chains one worker process runs together as one batched computation (cluster.engine.batched): one
    # model copy per k chains instead of one process each; the worker asks for k chains' CPUs and GPUs.
    chains_per_worker: int = 1

    @property
    def ranks(self) -> int:
        """Processes one chain runs in (1: the single-process engine; > 1: a ZeRO-3 group)."""
        return int(self.gpus_per_chain) if self.gpus_per_chain > 1 else self.ranks_per_chain

    def validate(self, path: str = "compute") -> None:
        g = self.gpus_per_chain
        _require(isinstance(g, (int, float)) and 0 <= g <= 64, f"{path}.gpus_per_chain", f"must be in [0, 64], got {g!r}")
        _require(g <= 1 or float(g).is_integer(), f"{path}.gpus_per_chain",
                 f"more than one GPU per chain must be a whole number, got {g!r}")
        _require(isinstance(self.cpus_per_chain, (int, float)) and 0 < self.cpus_per_chain <= 256,
                 f"{path}.cpus_per_chain", f"must be in (0, 256], got {self.cpus_per_chain!r}")
        _require(isinstance(self.max_chain_retries, int) and 0 <= self.max_chain_retries <= 10,
                 f"{path}.max_chain_retries", f"must be an integer in [0, 10], got {self.max_chain_retries!r}")
        _require(isinstance(self.timeout_s, (int, float)) and 0 <= self.timeout_s <= 30 * 86400,
                 f"{path}.timeout_s", f"must be in [0, 2592000] seconds (0 = none), got {self.timeout_s!r}")
        r = self.ranks_per_chain
        _require(isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= 64, f"{path}.ranks_per_chain",
                 f"must be an integer in [1, 64], got {r!r}")
        _require(g == 0 or r == 1 or (g > 1 and r == int(g)), f"{path}.ranks_per_chain",
                 f"with GPUs a sharded chain has one rank per GPU: set gpus_per_chain={r} and leave ranks_per_chain "
                 f"unset (got gpus_per_chain={g:g}, ranks_per_chain={r})")
        _require(self.zero_stage == 3, f"{path}.zero_stage",
                 f"only ZeRO stage 3 is supported (stages 1-2 keep the whole weights on every rank, which a "
                 f"single-process chain already does); set zero_stage=3 or leave it unset, got {self.zero_stage!r}")
        _require(isinstance(self.lean_memory, bool), f"{path}.lean_memory", f"must be true or false, got {self.lean_memory!r}")
        _require(not (self.lean_memory and self.ranks > 1), f"{path}.lean_memory",
                 "is for single-process chains; a sharded chain already divides its memory by its ranks: "
                 "set lean_memory=false or use one rank")
        k = self.chains_per_worker
        _require(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 256, f"{path}.chains_per_worker",
                 f"must be an integer in [1, 256], got {k!r}")
        _require(k == 1 or (self.ranks == 1 and not self.lean_memory), f"{path}.chains_per_worker",
                 "batches the chains of one single-process worker; sharded (ranks > 1) and lean_memory chains run "
                 "one at a time: set chains_per_worker=1")
        _require(k == 1 or g * k <= 1 + 1e-9, f"{path}.chains_per_worker",
                 f"a worker batches its chains on one GPU: gpus_per_chain x chains_per_worker must be at most 1, "
                 f"got {g:g} x {k}; lower one of them")

    @classmethod
    def from_dict(cls, data: Any, path: str = "compute") -> "ComputeSpec":
        return _flat(cls, data, path)


MAX_CHECKPOINTS = 1024  # checkpoints of one trajectory job
MAX_TRAJECTORY_UNITS = 65536  # (checkpoint, restriction) units of one trajectory job


@dataclass
class Checkpoint:
    """One checkpoint of an LLC trajectory (docs/trajectories.md): a revision of the job's hub
    model (`model.hub_id`, e.g. Pythia's branch "step1000"), or a local directory. `step` is the
    training step it was saved at; the trajectory's time axis."""

    step: int = 0
    revision: str = ""
    local_path: str = ""
    name: str = ""  # a label; empty = "step<step>"

    @property
    def label(self) -> str:
        return self.name or f"step{self.step}"

    def model_ref(self, model: "ModelRef") -> "ModelRef":
        """The single model this checkpoint is: the job's model settings (dtype, remote code) at it."""
        if self.local_path:
            return ModelRef(local_path=self.local_path, dtype=model.dtype, trust_remote_code=model.trust_remote_code)
        return ModelRef(hub_id=model.hub_id, revision=self.revision, dtype=model.dtype,
                        trust_remote_code=model.trust_remote_code)

    def validate(self, path: str, model: "ModelRef") -> None:
        _require(isinstance(self.step, int) and not isinstance(self.step, bool) and 0 <= self.step <= 10**15,
                 f"{path}.step", f"must be an integer training step >= 0, got {self.step!r}")
        _short(self.revision, f"{path}.revision")
        _short(self.local_path, f"{path}.local_path", MAX_PATH)
        _require(bool(self.revision) != bool(self.local_path), path,
                 "give exactly one of revision (a branch, tag or commit of model.hub_id, e.g. 'step1000') or "
                 "local_path (a directory saved with save_pretrained)")
        _require(not self.revision or bool(model.hub_id), f"{path}.revision",
                 "names a revision of model.hub_id: set model.hub_id (e.g. 'EleutherAI/pythia-14m'), or give "
                 "local_path instead")
        _require(self.name == "" or (isinstance(self.name, str) and NAME_RE.match(self.name) is not None),
                 f"{path}.name", f"must be 1-128 characters of letters, digits, '_', '.', ':' or '-', got {shown(self.name)}")
        self.model_ref(model).validate(path)

    @classmethod
    def from_dict(cls, data: Any, path: str) -> "Checkpoint":
        _from_dict(cls, data, path)
        return cls(**data)


@dataclass
class JobSpec:
    job_id: str
    model: ModelRef
    dataset: DatasetRef
    sampler: SamplerConfig
    restrictions: list[Restriction] = field(default_factory=lambda: [Restriction()])
    batch_size: int = 8
    compute: ComputeSpec = field(default_factory=ComputeSpec)
    # An LLC trajectory (cluster/trajectory.py): the estimate at every checkpoint; empty = `model` alone.
    checkpoints: list[Checkpoint] = field(default_factory=list)
    calibrate_at_step: int = -1  # automatic sampler settings are calibrated at this checkpoint; -1 = the last
    use_cache: bool = True  # answer (checkpoint, restriction) units with a stored result from the store
    observables: ObservablesSpec | None = None  # per-example losses recorded while sampling (docs/observables.md)

    def validate(self) -> None:
        """The whole spec's own fields and the rules across its parts; every part checked itself when
        it was built (`from_dict`), so nothing is validated twice."""
        _require(isinstance(self.job_id, str) and NAME_RE.match(self.job_id) is not None, "job_id",
                 f"must be 1-128 characters of letters, digits, '_', '.', ':' or '-', got {shown(self.job_id)}")
        if self.checkpoints:
            self._validate_checkpoints()
        _require(1 <= len(self.restrictions) <= 4096, "restrictions", f"give 1 to 4096 restrictions, got {len(self.restrictions)}")
        names = [r.name for r in self.restrictions]
        dup = sorted({n for n in names if names.count(n) > 1})
        _require(not dup, "restrictions", f"restriction names must be unique; repeated: {dup}")
        _require(isinstance(self.batch_size, int) and 1 <= self.batch_size <= 65536, "batch_size",
                 f"must be an integer in [1, 65536], got {self.batch_size!r}")
        ranks = self.compute.ranks
        _require(self.batch_size % ranks == 0, "batch_size",
                 f"a ZeRO-3 chain splits each batch over its {ranks} ranks: make batch_size a multiple of {ranks}, "
                 f"got {self.batch_size}")
        _require(not self.compute.lean_memory or self.model.dtype == "bfloat16", "compute.lean_memory",
                 f"keeps the weights in bfloat16: set model.dtype='bfloat16' (got {self.model.dtype!r})")
        if self.observables is not None:
            self.observables.validate(self)

    def _validate_checkpoints(self) -> None:
        _require(len(self.checkpoints) <= MAX_CHECKPOINTS, "checkpoints",
                 f"give at most {MAX_CHECKPOINTS} checkpoints, got {len(self.checkpoints)}")
        _require(not self.model.local_path, "model.local_path",
                 "a trajectory names its local directories in checkpoints[].local_path: leave model.local_path empty")
        for i, cp in enumerate(self.checkpoints):
            cp.validate(f"checkpoints[{i}]", self.model)
        units = len(self.checkpoints) * len(self.restrictions)
        _require(units <= MAX_TRAJECTORY_UNITS, "checkpoints",
                 f"{len(self.checkpoints)} checkpoints x {len(self.restrictions)} restrictions = {units} units; at most "
                 f"{MAX_TRAJECTORY_UNITS} are allowed: split the trajectory into several estimates")
        steps = [cp.step for cp in self.checkpoints]
        dup = sorted({t for t in steps if steps.count(t) > 1})
        _require(not dup, "checkpoints", f"checkpoint steps must be unique; repeated: {dup}")
        _require(isinstance(self.calibrate_at_step, int) and (self.calibrate_at_step == -1 or self.calibrate_at_step in steps),
                 "calibrate_at_step", f"must be the step of one of the checkpoints {sorted(steps)[:10]} "
                 f"(or unset = the last), got {self.calibrate_at_step!r}")
        _require(isinstance(self.use_cache, bool), "use_cache", f"must be true or false, got {self.use_cache!r}")

    def at_checkpoint(self, index: int, restrictions: list[Restriction] | None = None) -> "JobSpec":
        """The single-model spec of checkpoint `index` (optionally of some restrictions only)."""
        return dataclasses.replace(self, model=self.checkpoints[index].model_ref(self.model), checkpoints=[],
                                   calibrate_at_step=-1,
                                   restrictions=list(self.restrictions if restrictions is None else restrictions))

    def calibration_index(self) -> int:
        """Index of the checkpoint automatic settings are calibrated on: the one named, else the last step."""
        steps = [cp.step for cp in self.checkpoints]
        target = self.calibrate_at_step if self.calibrate_at_step in steps else max(steps)
        return steps.index(target)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sampler"] = self.sampler.to_dict()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> "JobSpec":
        _from_dict(cls, data, "spec")
        try:
            sampler = SamplerConfig.from_dict(data.get("sampler") or {})
        except InvalidField as exc:
            raise exc.under("sampler") from None
        except TypeError as exc:
            raise SpecError("sampler", str(exc)) from None
        restrictions = data.get("restrictions") or [{"name": "full"}]
        _require(isinstance(restrictions, list), "restrictions", "must be a list")
        checkpoints = data.get("checkpoints") or []
        _require(isinstance(checkpoints, list), "checkpoints", "must be a list")
        spec = cls(
            job_id=data.get("job_id", ""),
            model=ModelRef.from_dict(data.get("model") or {}, "model", validate=not checkpoints),
            dataset=DatasetRef.from_dict(data.get("dataset") or {}, "dataset"),
            sampler=sampler,
            restrictions=[Restriction.from_dict(r, f"restrictions[{i}]") for i, r in enumerate(restrictions)],
            batch_size=data.get("batch_size", 8),
            compute=ComputeSpec.from_dict(data.get("compute") or {}, "compute"),
            checkpoints=[Checkpoint.from_dict(c, f"checkpoints[{i}]") for i, c in enumerate(checkpoints)],
            calibrate_at_step=data.get("calibrate_at_step", -1),
            use_cache=data.get("use_cache", True),
            observables=ObservablesSpec.from_dict(data["observables"]) if data.get("observables") else None,
        )
        spec.validate()
        return spec

    @classmethod
    def from_json(cls, text: str) -> "JobSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError("spec", f"not valid JSON: {exc}") from None
        return cls.from_dict(data)


GRANULARITIES = ("sequence", "token")
MAX_OBSERVABLE_SETS = 16
SAMPLING_OBSERVABLE = "sampling"  # the observable of the job's own dataset (include_sampling)


@dataclass
class ObservableDataset:
    """A named set of examples whose per-example losses the chains record (the first
    `ObservablesSpec.max_examples` rows of the tokenized dataset)."""

    name: str = ""
    dataset: DatasetRef = field(default_factory=DatasetRef)

    @classmethod
    def from_dict(cls, data: Any, path: str) -> "ObservableDataset":
        _from_dict(cls, data, path)
        return cls(name=data.get("name", ""), dataset=DatasetRef.from_dict(data.get("dataset") or {}, f"{path}.dataset"))


@dataclass
class ObservablesSpec:
    """Observables during sampling (cluster/observables.py): every `every`-th draw, each chain
    evaluates the losses of up to `max_examples` examples of each dataset (and of the sampling
    dataset with `include_sampling`), per sequence or per token. The losses are an artifact
    of the job; BIFs and susceptibilities are computed from them."""

    datasets: list[ObservableDataset] = field(default_factory=list)
    granularity: str = "sequence"
    every: int = 1
    max_examples: int = 32
    include_sampling: bool = True

    def values(self, spec: "JobSpec") -> int:
        """Upper bound of the recorded loss values: examples × records × chains × restrictions (× tokens)."""
        refs = [d.dataset for d in self.datasets] + ([spec.dataset] if self.include_sampling else [])
        per_record = 0
        for ref in refs:
            examples = min(self.max_examples, ref.max_examples) if ref.max_examples else self.max_examples
            per_record += examples * (ref.context_length - 1 if self.granularity == "token" else 1)
        records = -(-spec.sampler.draws // self.every)
        return per_record * records * spec.sampler.chains * len(spec.restrictions)

    def names(self) -> list[str]:
        return [d.name for d in self.datasets] + ([SAMPLING_OBSERVABLE] if self.include_sampling else [])

    def validate(self, spec: "JobSpec", path: str = "observables") -> None:
        _require(1 <= len(self.datasets) + int(bool(self.include_sampling)) and len(self.datasets) <= MAX_OBSERVABLE_SETS,
                 f"{path}.datasets", f"name 1 to {MAX_OBSERVABLE_SETS} observable datasets (or include_sampling)")
        for i, d in enumerate(self.datasets):
            _require(isinstance(d.name, str) and NAME_RE.match(d.name) is not None, f"{path}.datasets[{i}].name",
                     f"must be 1-128 characters of letters, digits, '_', '.', ':' or '-', got {shown(d.name)}")
            _require(d.name != SAMPLING_OBSERVABLE or not self.include_sampling, f"{path}.datasets[{i}].name",
                     f"{SAMPLING_OBSERVABLE!r} names the sampling dataset's observable (include_sampling): rename it")
        names = [d.name for d in self.datasets]
        dup = sorted({n for n in names if names.count(n) > 1})
        _require(not dup, f"{path}.datasets", f"observable names must be unique; repeated: {dup}")
        _require(self.granularity in GRANULARITIES, f"{path}.granularity",
                 f"must be one of {GRANULARITIES}, got {shown(self.granularity)}")
        _require(isinstance(self.every, int) and not isinstance(self.every, bool) and 1 <= self.every <= 1_000_000,
                 f"{path}.every", f"must be an integer in [1, 1000000] (record every k-th draw), got {self.every!r}")
        _require(isinstance(self.max_examples, int) and not isinstance(self.max_examples, bool)
                 and 1 <= self.max_examples <= 1_000_000, f"{path}.max_examples",
                 f"must be an integer in [1, 1000000], got {self.max_examples!r}")
        _require(isinstance(self.include_sampling, bool), f"{path}.include_sampling",
                 f"must be true or false, got {self.include_sampling!r}")
        _require(spec.compute.ranks == 1, path, "observables are recorded by single-process chains only: set "
                 "compute.ranks_per_chain=1 and gpus_per_chain <= 1, or drop observables")
        _require(not spec.checkpoints, path, "observables are not recorded in trajectory jobs yet: drop observables "
                 "or checkpoints")

    @classmethod
    def from_dict(cls, data: Any, path: str = "observables") -> "ObservablesSpec":
        known = _from_dict(cls, data, path)
        datasets = data.get("datasets") or []
        _require(isinstance(datasets, list), f"{path}.datasets", "must be a list")
        kwargs = {k: data[k] for k in known - {"datasets"} if k in data}
        return cls(datasets=[ObservableDataset.from_dict(d, f"{path}.datasets[{i}]") for i, d in enumerate(datasets)],
                   **kwargs)
