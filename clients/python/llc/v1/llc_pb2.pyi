import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Dtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[Dtype]
    DTYPE_AUTO: _ClassVar[Dtype]
    DTYPE_FLOAT32: _ClassVar[Dtype]
    DTYPE_BFLOAT16: _ClassVar[Dtype]
    DTYPE_FLOAT16: _ClassVar[Dtype]

class SelectorKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SELECTOR_KIND_UNSPECIFIED: _ClassVar[SelectorKind]
    SELECTOR_KIND_PATTERN: _ClassVar[SelectorKind]
    SELECTOR_KIND_REGEX: _ClassVar[SelectorKind]
    SELECTOR_KIND_LAYER: _ClassVar[SelectorKind]
    SELECTOR_KIND_HEAD: _ClassVar[SelectorKind]
    SELECTOR_KIND_ATTENTION: _ClassVar[SelectorKind]
    SELECTOR_KIND_MLP: _ClassVar[SelectorKind]
    SELECTOR_KIND_EMBEDDING: _ClassVar[SelectorKind]
    SELECTOR_KIND_UNEMBEDDING: _ClassVar[SelectorKind]
    SELECTOR_KIND_ALL: _ClassVar[SelectorKind]

class SamplerMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAMPLER_METHOD_UNSPECIFIED: _ClassVar[SamplerMethod]
    SAMPLER_METHOD_SGLD: _ClassVar[SamplerMethod]
    SAMPLER_METHOD_RMSPROP_SGLD: _ClassVar[SamplerMethod]

class InitLossMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INIT_LOSS_MODE_UNSPECIFIED: _ClassVar[InitLossMode]
    INIT_LOSS_MODE_AUTO: _ClassVar[InitLossMode]
    INIT_LOSS_MODE_FULL: _ClassVar[InitLossMode]
    INIT_LOSS_MODE_PAIRED: _ClassVar[InitLossMode]

class EstimateView(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ESTIMATE_VIEW_UNSPECIFIED: _ClassVar[EstimateView]
    ESTIMATE_VIEW_SUMMARY: _ClassVar[EstimateView]
    ESTIMATE_VIEW_FULL: _ClassVar[EstimateView]

class EstimateState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ESTIMATE_STATE_UNSPECIFIED: _ClassVar[EstimateState]
    ESTIMATE_STATE_QUEUED: _ClassVar[EstimateState]
    ESTIMATE_STATE_RUNNING: _ClassVar[EstimateState]
    ESTIMATE_STATE_SUCCEEDED: _ClassVar[EstimateState]
    ESTIMATE_STATE_FAILED: _ClassVar[EstimateState]
    ESTIMATE_STATE_CANCELLED: _ClassVar[EstimateState]

class ChainState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHAIN_STATE_UNSPECIFIED: _ClassVar[ChainState]
    CHAIN_STATE_SUCCEEDED: _ClassVar[ChainState]
    CHAIN_STATE_DIVERGED: _ClassVar[ChainState]
    CHAIN_STATE_FAILED: _ClassVar[ChainState]
    CHAIN_STATE_RETRYING: _ClassVar[ChainState]

class Granularity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRANULARITY_UNSPECIFIED: _ClassVar[Granularity]
    GRANULARITY_SEQUENCE: _ClassVar[Granularity]
    GRANULARITY_TOKEN: _ClassVar[Granularity]
DTYPE_UNSPECIFIED: Dtype
DTYPE_AUTO: Dtype
DTYPE_FLOAT32: Dtype
DTYPE_BFLOAT16: Dtype
DTYPE_FLOAT16: Dtype
SELECTOR_KIND_UNSPECIFIED: SelectorKind
SELECTOR_KIND_PATTERN: SelectorKind
SELECTOR_KIND_REGEX: SelectorKind
SELECTOR_KIND_LAYER: SelectorKind
SELECTOR_KIND_HEAD: SelectorKind
SELECTOR_KIND_ATTENTION: SelectorKind
SELECTOR_KIND_MLP: SelectorKind
SELECTOR_KIND_EMBEDDING: SelectorKind
SELECTOR_KIND_UNEMBEDDING: SelectorKind
SELECTOR_KIND_ALL: SelectorKind
SAMPLER_METHOD_UNSPECIFIED: SamplerMethod
SAMPLER_METHOD_SGLD: SamplerMethod
SAMPLER_METHOD_RMSPROP_SGLD: SamplerMethod
INIT_LOSS_MODE_UNSPECIFIED: InitLossMode
INIT_LOSS_MODE_AUTO: InitLossMode
INIT_LOSS_MODE_FULL: InitLossMode
INIT_LOSS_MODE_PAIRED: InitLossMode
ESTIMATE_VIEW_UNSPECIFIED: EstimateView
ESTIMATE_VIEW_SUMMARY: EstimateView
ESTIMATE_VIEW_FULL: EstimateView
ESTIMATE_STATE_UNSPECIFIED: EstimateState
ESTIMATE_STATE_QUEUED: EstimateState
ESTIMATE_STATE_RUNNING: EstimateState
ESTIMATE_STATE_SUCCEEDED: EstimateState
ESTIMATE_STATE_FAILED: EstimateState
ESTIMATE_STATE_CANCELLED: EstimateState
CHAIN_STATE_UNSPECIFIED: ChainState
CHAIN_STATE_SUCCEEDED: ChainState
CHAIN_STATE_DIVERGED: ChainState
CHAIN_STATE_FAILED: ChainState
CHAIN_STATE_RETRYING: ChainState
GRANULARITY_UNSPECIFIED: Granularity
GRANULARITY_SEQUENCE: Granularity
GRANULARITY_TOKEN: Granularity

class ModelRef(_message.Message):
    __slots__ = ("hub_id", "local_path", "revision", "dtype", "trust_remote_code")
    HUB_ID_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PATH_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    TRUST_REMOTE_CODE_FIELD_NUMBER: _ClassVar[int]
    hub_id: str
    local_path: str
    revision: str
    dtype: Dtype
    trust_remote_code: bool
    def __init__(self, hub_id: _Optional[str] = ..., local_path: _Optional[str] = ..., revision: _Optional[str] = ..., dtype: _Optional[_Union[Dtype, str]] = ..., trust_remote_code: _Optional[bool] = ...) -> None: ...

class DatasetRef(_message.Message):
    __slots__ = ("hub_id", "config", "split", "revision", "files", "file_format", "text_column", "input_ids_column", "context_length", "max_examples", "shuffle_seed", "packing")
    HUB_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    FILE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    TEXT_COLUMN_FIELD_NUMBER: _ClassVar[int]
    INPUT_IDS_COLUMN_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    SHUFFLE_SEED_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    hub_id: str
    config: str
    split: str
    revision: str
    files: _containers.RepeatedScalarFieldContainer[str]
    file_format: str
    text_column: str
    input_ids_column: str
    context_length: int
    max_examples: int
    shuffle_seed: int
    packing: bool
    def __init__(self, hub_id: _Optional[str] = ..., config: _Optional[str] = ..., split: _Optional[str] = ..., revision: _Optional[str] = ..., files: _Optional[_Iterable[str]] = ..., file_format: _Optional[str] = ..., text_column: _Optional[str] = ..., input_ids_column: _Optional[str] = ..., context_length: _Optional[int] = ..., max_examples: _Optional[int] = ..., shuffle_seed: _Optional[int] = ..., packing: _Optional[bool] = ...) -> None: ...

class WeightSelector(_message.Message):
    __slots__ = ("kind", "pattern", "layer", "head")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    kind: SelectorKind
    pattern: str
    layer: int
    head: int
    def __init__(self, kind: _Optional[_Union[SelectorKind, str]] = ..., pattern: _Optional[str] = ..., layer: _Optional[int] = ..., head: _Optional[int] = ...) -> None: ...

class Restriction(_message.Message):
    __slots__ = ("name", "weights", "dataset")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    name: str
    weights: _containers.RepeatedCompositeFieldContainer[WeightSelector]
    dataset: DatasetRef
    def __init__(self, name: _Optional[str] = ..., weights: _Optional[_Iterable[_Union[WeightSelector, _Mapping]]] = ..., dataset: _Optional[_Union[DatasetRef, _Mapping]] = ...) -> None: ...

class SamplerSettings(_message.Message):
    __slots__ = ("step_size", "nbeta", "gamma", "method", "chains", "burn_in", "draws", "steps_between_draws", "seed", "init_loss", "init_loss_batches", "dtype", "rmsprop_alpha", "rmsprop_eps", "mala", "fetch_every", "calibration_budget")
    STEP_SIZE_FIELD_NUMBER: _ClassVar[int]
    NBETA_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CHAINS_FIELD_NUMBER: _ClassVar[int]
    BURN_IN_FIELD_NUMBER: _ClassVar[int]
    DRAWS_FIELD_NUMBER: _ClassVar[int]
    STEPS_BETWEEN_DRAWS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    INIT_LOSS_FIELD_NUMBER: _ClassVar[int]
    INIT_LOSS_BATCHES_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    RMSPROP_ALPHA_FIELD_NUMBER: _ClassVar[int]
    RMSPROP_EPS_FIELD_NUMBER: _ClassVar[int]
    MALA_FIELD_NUMBER: _ClassVar[int]
    FETCH_EVERY_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_BUDGET_FIELD_NUMBER: _ClassVar[int]
    step_size: float
    nbeta: float
    gamma: float
    method: SamplerMethod
    chains: int
    burn_in: int
    draws: int
    steps_between_draws: int
    seed: int
    init_loss: InitLossMode
    init_loss_batches: int
    dtype: Dtype
    rmsprop_alpha: float
    rmsprop_eps: float
    mala: bool
    fetch_every: int
    calibration_budget: float
    def __init__(self, step_size: _Optional[float] = ..., nbeta: _Optional[float] = ..., gamma: _Optional[float] = ..., method: _Optional[_Union[SamplerMethod, str]] = ..., chains: _Optional[int] = ..., burn_in: _Optional[int] = ..., draws: _Optional[int] = ..., steps_between_draws: _Optional[int] = ..., seed: _Optional[int] = ..., init_loss: _Optional[_Union[InitLossMode, str]] = ..., init_loss_batches: _Optional[int] = ..., dtype: _Optional[_Union[Dtype, str]] = ..., rmsprop_alpha: _Optional[float] = ..., rmsprop_eps: _Optional[float] = ..., mala: _Optional[bool] = ..., fetch_every: _Optional[int] = ..., calibration_budget: _Optional[float] = ...) -> None: ...

class ComputeSettings(_message.Message):
    __slots__ = ("gpus_per_chain", "cpus_per_chain", "max_chain_retries", "timeout_s", "ranks_per_chain", "zero_stage", "lean_memory", "chains_per_worker")
    GPUS_PER_CHAIN_FIELD_NUMBER: _ClassVar[int]
    CPUS_PER_CHAIN_FIELD_NUMBER: _ClassVar[int]
    MAX_CHAIN_RETRIES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    RANKS_PER_CHAIN_FIELD_NUMBER: _ClassVar[int]
    ZERO_STAGE_FIELD_NUMBER: _ClassVar[int]
    LEAN_MEMORY_FIELD_NUMBER: _ClassVar[int]
    CHAINS_PER_WORKER_FIELD_NUMBER: _ClassVar[int]
    gpus_per_chain: float
    cpus_per_chain: float
    max_chain_retries: int
    timeout_s: float
    ranks_per_chain: int
    zero_stage: int
    lean_memory: bool
    chains_per_worker: int
    def __init__(self, gpus_per_chain: _Optional[float] = ..., cpus_per_chain: _Optional[float] = ..., max_chain_retries: _Optional[int] = ..., timeout_s: _Optional[float] = ..., ranks_per_chain: _Optional[int] = ..., zero_stage: _Optional[int] = ..., lean_memory: _Optional[bool] = ..., chains_per_worker: _Optional[int] = ...) -> None: ...

class EstimateSpec(_message.Message):
    __slots__ = ("model", "dataset", "restrictions", "sampler", "compute", "batch_size", "checkpoints", "calibrate_at_step", "use_cache", "observables")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    RESTRICTIONS_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATE_AT_STEP_FIELD_NUMBER: _ClassVar[int]
    USE_CACHE_FIELD_NUMBER: _ClassVar[int]
    OBSERVABLES_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    dataset: DatasetRef
    restrictions: _containers.RepeatedCompositeFieldContainer[Restriction]
    sampler: SamplerSettings
    compute: ComputeSettings
    batch_size: int
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    calibrate_at_step: int
    use_cache: bool
    observables: Observables
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., dataset: _Optional[_Union[DatasetRef, _Mapping]] = ..., restrictions: _Optional[_Iterable[_Union[Restriction, _Mapping]]] = ..., sampler: _Optional[_Union[SamplerSettings, _Mapping]] = ..., compute: _Optional[_Union[ComputeSettings, _Mapping]] = ..., batch_size: _Optional[int] = ..., checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ..., calibrate_at_step: _Optional[int] = ..., use_cache: _Optional[bool] = ..., observables: _Optional[_Union[Observables, _Mapping]] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("step", "revision", "local_path", "name")
    STEP_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PATH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    step: int
    revision: str
    local_path: str
    name: str
    def __init__(self, step: _Optional[int] = ..., revision: _Optional[str] = ..., local_path: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class CreateEstimateRequest(_message.Message):
    __slots__ = ("request_id", "spec")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    spec: EstimateSpec
    def __init__(self, request_id: _Optional[str] = ..., spec: _Optional[_Union[EstimateSpec, _Mapping]] = ...) -> None: ...

class CreateEstimateResponse(_message.Message):
    __slots__ = ("estimate", "created")
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    estimate: Estimate
    created: bool
    def __init__(self, estimate: _Optional[_Union[Estimate, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetEstimateRequest(_message.Message):
    __slots__ = ("estimate_id",)
    ESTIMATE_ID_FIELD_NUMBER: _ClassVar[int]
    estimate_id: str
    def __init__(self, estimate_id: _Optional[str] = ...) -> None: ...

class GetEstimateResponse(_message.Message):
    __slots__ = ("estimate",)
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    estimate: Estimate
    def __init__(self, estimate: _Optional[_Union[Estimate, _Mapping]] = ...) -> None: ...

class ListEstimatesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "states", "view")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    states: _containers.RepeatedScalarFieldContainer[EstimateState]
    view: EstimateView
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., states: _Optional[_Iterable[_Union[EstimateState, str]]] = ..., view: _Optional[_Union[EstimateView, str]] = ...) -> None: ...

class ListEstimatesResponse(_message.Message):
    __slots__ = ("estimates", "next_page_token")
    ESTIMATES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    estimates: _containers.RepeatedCompositeFieldContainer[Estimate]
    next_page_token: str
    def __init__(self, estimates: _Optional[_Iterable[_Union[Estimate, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelEstimateRequest(_message.Message):
    __slots__ = ("estimate_id",)
    ESTIMATE_ID_FIELD_NUMBER: _ClassVar[int]
    estimate_id: str
    def __init__(self, estimate_id: _Optional[str] = ...) -> None: ...

class CancelEstimateResponse(_message.Message):
    __slots__ = ("estimate",)
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    estimate: Estimate
    def __init__(self, estimate: _Optional[_Union[Estimate, _Mapping]] = ...) -> None: ...

class WatchEstimateRequest(_message.Message):
    __slots__ = ("estimate_id", "after_seq")
    ESTIMATE_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    estimate_id: str
    after_seq: int
    def __init__(self, estimate_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class PreviewRestrictionsRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: EstimateSpec
    def __init__(self, spec: _Optional[_Union[EstimateSpec, _Mapping]] = ...) -> None: ...

class PreviewRestrictionsResponse(_message.Message):
    __slots__ = ("restrictions",)
    RESTRICTIONS_FIELD_NUMBER: _ClassVar[int]
    restrictions: _containers.RepeatedCompositeFieldContainer[RestrictionPreview]
    def __init__(self, restrictions: _Optional[_Iterable[_Union[RestrictionPreview, _Mapping]]] = ...) -> None: ...

class EstimateError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class RestrictionProgress(_message.Message):
    __slots__ = ("restriction", "chains_total", "chains_finished", "llc_running")
    RESTRICTION_FIELD_NUMBER: _ClassVar[int]
    CHAINS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CHAINS_FINISHED_FIELD_NUMBER: _ClassVar[int]
    LLC_RUNNING_FIELD_NUMBER: _ClassVar[int]
    restriction: str
    chains_total: int
    chains_finished: int
    llc_running: float
    def __init__(self, restriction: _Optional[str] = ..., chains_total: _Optional[int] = ..., chains_finished: _Optional[int] = ..., llc_running: _Optional[float] = ...) -> None: ...

class EstimateProgress(_message.Message):
    __slots__ = ("chains_total", "chains_finished", "steps_done", "steps_total", "fraction", "restrictions", "checkpoints")
    CHAINS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CHAINS_FINISHED_FIELD_NUMBER: _ClassVar[int]
    STEPS_DONE_FIELD_NUMBER: _ClassVar[int]
    STEPS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    RESTRICTIONS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    chains_total: int
    chains_finished: int
    steps_done: int
    steps_total: int
    fraction: float
    restrictions: _containers.RepeatedCompositeFieldContainer[RestrictionProgress]
    checkpoints: _containers.RepeatedCompositeFieldContainer[CheckpointProgress]
    def __init__(self, chains_total: _Optional[int] = ..., chains_finished: _Optional[int] = ..., steps_done: _Optional[int] = ..., steps_total: _Optional[int] = ..., fraction: _Optional[float] = ..., restrictions: _Optional[_Iterable[_Union[RestrictionProgress, _Mapping]]] = ..., checkpoints: _Optional[_Iterable[_Union[CheckpointProgress, _Mapping]]] = ...) -> None: ...

class CheckpointProgress(_message.Message):
    __slots__ = ("step", "chains_total", "chains_finished", "cached_restrictions")
    STEP_FIELD_NUMBER: _ClassVar[int]
    CHAINS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CHAINS_FINISHED_FIELD_NUMBER: _ClassVar[int]
    CACHED_RESTRICTIONS_FIELD_NUMBER: _ClassVar[int]
    step: int
    chains_total: int
    chains_finished: int
    cached_restrictions: int
    def __init__(self, step: _Optional[int] = ..., chains_total: _Optional[int] = ..., chains_finished: _Optional[int] = ..., cached_restrictions: _Optional[int] = ...) -> None: ...

class Estimate(_message.Message):
    __slots__ = ("estimate_id", "request_id", "owner", "state", "spec", "create_time", "start_time", "end_time", "progress", "result", "error", "last_seq", "ray_submission_id")
    ESTIMATE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    RAY_SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    estimate_id: str
    request_id: str
    owner: str
    state: EstimateState
    spec: EstimateSpec
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    progress: EstimateProgress
    result: EstimateResult
    error: EstimateError
    last_seq: int
    ray_submission_id: str
    def __init__(self, estimate_id: _Optional[str] = ..., request_id: _Optional[str] = ..., owner: _Optional[str] = ..., state: _Optional[_Union[EstimateState, str]] = ..., spec: _Optional[_Union[EstimateSpec, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., progress: _Optional[_Union[EstimateProgress, _Mapping]] = ..., result: _Optional[_Union[EstimateResult, _Mapping]] = ..., error: _Optional[_Union[EstimateError, _Mapping]] = ..., last_seq: _Optional[int] = ..., ray_submission_id: _Optional[str] = ...) -> None: ...

class Chain(_message.Message):
    __slots__ = ("chain", "seed", "llc", "state", "loss_trace", "mala_acceptance", "frac_below_init", "steps", "message", "attempts", "gradient_noise", "equipartition")
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LLC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LOSS_TRACE_FIELD_NUMBER: _ClassVar[int]
    MALA_ACCEPTANCE_FIELD_NUMBER: _ClassVar[int]
    FRAC_BELOW_INIT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_NOISE_FIELD_NUMBER: _ClassVar[int]
    EQUIPARTITION_FIELD_NUMBER: _ClassVar[int]
    chain: int
    seed: int
    llc: float
    state: ChainState
    loss_trace: _containers.RepeatedScalarFieldContainer[float]
    mala_acceptance: float
    frac_below_init: float
    steps: int
    message: str
    attempts: int
    gradient_noise: float
    equipartition: float
    def __init__(self, chain: _Optional[int] = ..., seed: _Optional[int] = ..., llc: _Optional[float] = ..., state: _Optional[_Union[ChainState, str]] = ..., loss_trace: _Optional[_Iterable[float]] = ..., mala_acceptance: _Optional[float] = ..., frac_below_init: _Optional[float] = ..., steps: _Optional[int] = ..., message: _Optional[str] = ..., attempts: _Optional[int] = ..., gradient_noise: _Optional[float] = ..., equipartition: _Optional[float] = ...) -> None: ...

class Diagnostics(_message.Message):
    __slots__ = ("rhat", "ess", "mala_acceptance", "frac_below_init", "diverged_chains", "ess_tail", "trend_t", "llc_sem", "llc_half_width", "gradient_noise", "equipartition", "failed_chains", "init_loss_offset", "init_loss_offset_se")
    RHAT_FIELD_NUMBER: _ClassVar[int]
    ESS_FIELD_NUMBER: _ClassVar[int]
    MALA_ACCEPTANCE_FIELD_NUMBER: _ClassVar[int]
    FRAC_BELOW_INIT_FIELD_NUMBER: _ClassVar[int]
    DIVERGED_CHAINS_FIELD_NUMBER: _ClassVar[int]
    ESS_TAIL_FIELD_NUMBER: _ClassVar[int]
    TREND_T_FIELD_NUMBER: _ClassVar[int]
    LLC_SEM_FIELD_NUMBER: _ClassVar[int]
    LLC_HALF_WIDTH_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_NOISE_FIELD_NUMBER: _ClassVar[int]
    EQUIPARTITION_FIELD_NUMBER: _ClassVar[int]
    FAILED_CHAINS_FIELD_NUMBER: _ClassVar[int]
    INIT_LOSS_OFFSET_FIELD_NUMBER: _ClassVar[int]
    INIT_LOSS_OFFSET_SE_FIELD_NUMBER: _ClassVar[int]
    rhat: float
    ess: float
    mala_acceptance: float
    frac_below_init: float
    diverged_chains: _containers.RepeatedScalarFieldContainer[int]
    ess_tail: float
    trend_t: float
    llc_sem: float
    llc_half_width: float
    gradient_noise: float
    equipartition: float
    failed_chains: _containers.RepeatedScalarFieldContainer[int]
    init_loss_offset: float
    init_loss_offset_se: float
    def __init__(self, rhat: _Optional[float] = ..., ess: _Optional[float] = ..., mala_acceptance: _Optional[float] = ..., frac_below_init: _Optional[float] = ..., diverged_chains: _Optional[_Iterable[int]] = ..., ess_tail: _Optional[float] = ..., trend_t: _Optional[float] = ..., llc_sem: _Optional[float] = ..., llc_half_width: _Optional[float] = ..., gradient_noise: _Optional[float] = ..., equipartition: _Optional[float] = ..., failed_chains: _Optional[_Iterable[int]] = ..., init_loss_offset: _Optional[float] = ..., init_loss_offset_se: _Optional[float] = ...) -> None: ...

class Pilot(_message.Message):
    __slots__ = ("step_size", "llc", "mala_acceptance", "gradient_noise", "trend_t", "verdict", "why", "chosen")
    STEP_SIZE_FIELD_NUMBER: _ClassVar[int]
    LLC_FIELD_NUMBER: _ClassVar[int]
    MALA_ACCEPTANCE_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_NOISE_FIELD_NUMBER: _ClassVar[int]
    TREND_T_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    step_size: float
    llc: float
    mala_acceptance: float
    gradient_noise: float
    trend_t: float
    verdict: str
    why: str
    chosen: bool
    def __init__(self, step_size: _Optional[float] = ..., llc: _Optional[float] = ..., mala_acceptance: _Optional[float] = ..., gradient_noise: _Optional[float] = ..., trend_t: _Optional[float] = ..., verdict: _Optional[str] = ..., why: _Optional[str] = ..., chosen: _Optional[bool] = ...) -> None: ...

class Calibration(_message.Message):
    __slots__ = ("pilots", "step_size", "step_size_reason", "burn_in", "burn_in_reason", "nbeta", "nbeta_source", "sample_size", "pilot_steps", "main_steps", "cost_fraction", "discarded_draws")
    PILOTS_FIELD_NUMBER: _ClassVar[int]
    STEP_SIZE_FIELD_NUMBER: _ClassVar[int]
    STEP_SIZE_REASON_FIELD_NUMBER: _ClassVar[int]
    BURN_IN_FIELD_NUMBER: _ClassVar[int]
    BURN_IN_REASON_FIELD_NUMBER: _ClassVar[int]
    NBETA_FIELD_NUMBER: _ClassVar[int]
    NBETA_SOURCE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PILOT_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAIN_STEPS_FIELD_NUMBER: _ClassVar[int]
    COST_FRACTION_FIELD_NUMBER: _ClassVar[int]
    DISCARDED_DRAWS_FIELD_NUMBER: _ClassVar[int]
    pilots: _containers.RepeatedCompositeFieldContainer[Pilot]
    step_size: float
    step_size_reason: str
    burn_in: int
    burn_in_reason: str
    nbeta: float
    nbeta_source: str
    sample_size: int
    pilot_steps: int
    main_steps: int
    cost_fraction: float
    discarded_draws: int
    def __init__(self, pilots: _Optional[_Iterable[_Union[Pilot, _Mapping]]] = ..., step_size: _Optional[float] = ..., step_size_reason: _Optional[str] = ..., burn_in: _Optional[int] = ..., burn_in_reason: _Optional[str] = ..., nbeta: _Optional[float] = ..., nbeta_source: _Optional[str] = ..., sample_size: _Optional[int] = ..., pilot_steps: _Optional[int] = ..., main_steps: _Optional[int] = ..., cost_fraction: _Optional[float] = ..., discarded_draws: _Optional[int] = ...) -> None: ...

class MovedTensor(_message.Message):
    __slots__ = ("name", "shape", "elements")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    elements: int
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., elements: _Optional[int] = ...) -> None: ...

class RestrictionResult(_message.Message):
    __slots__ = ("name", "llc_mean", "llc_std", "llc_per_chain", "init_loss", "diagnostics", "warnings", "chains", "moved_tensors", "moved_elements", "calibration", "sampler")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LLC_MEAN_FIELD_NUMBER: _ClassVar[int]
    LLC_STD_FIELD_NUMBER: _ClassVar[int]
    LLC_PER_CHAIN_FIELD_NUMBER: _ClassVar[int]
    INIT_LOSS_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTICS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    CHAINS_FIELD_NUMBER: _ClassVar[int]
    MOVED_TENSORS_FIELD_NUMBER: _ClassVar[int]
    MOVED_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    name: str
    llc_mean: float
    llc_std: float
    llc_per_chain: _containers.RepeatedScalarFieldContainer[float]
    init_loss: float
    diagnostics: Diagnostics
    warnings: _containers.RepeatedScalarFieldContainer[str]
    chains: _containers.RepeatedCompositeFieldContainer[Chain]
    moved_tensors: _containers.RepeatedCompositeFieldContainer[MovedTensor]
    moved_elements: int
    calibration: Calibration
    sampler: SamplerSettings
    def __init__(self, name: _Optional[str] = ..., llc_mean: _Optional[float] = ..., llc_std: _Optional[float] = ..., llc_per_chain: _Optional[_Iterable[float]] = ..., init_loss: _Optional[float] = ..., diagnostics: _Optional[_Union[Diagnostics, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ..., chains: _Optional[_Iterable[_Union[Chain, _Mapping]]] = ..., moved_tensors: _Optional[_Iterable[_Union[MovedTensor, _Mapping]]] = ..., moved_elements: _Optional[int] = ..., calibration: _Optional[_Union[Calibration, _Mapping]] = ..., sampler: _Optional[_Union[SamplerSettings, _Mapping]] = ...) -> None: ...

class EstimateResult(_message.Message):
    __slots__ = ("restrictions", "provenance", "warnings", "checkpoints", "trajectories", "stage_detection", "calibration_checkpoint", "cached_units", "observables")
    RESTRICTIONS_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORIES_FIELD_NUMBER: _ClassVar[int]
    STAGE_DETECTION_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CACHED_UNITS_FIELD_NUMBER: _ClassVar[int]
    OBSERVABLES_FIELD_NUMBER: _ClassVar[int]
    restrictions: _containers.RepeatedCompositeFieldContainer[RestrictionResult]
    provenance: _struct_pb2.Struct
    warnings: _containers.RepeatedScalarFieldContainer[str]
    checkpoints: _containers.RepeatedCompositeFieldContainer[CheckpointResult]
    trajectories: _containers.RepeatedCompositeFieldContainer[Trajectory]
    stage_detection: _struct_pb2.Struct
    calibration_checkpoint: _struct_pb2.Struct
    cached_units: _containers.RepeatedCompositeFieldContainer[CachedUnit]
    observables: ObservablesResult
    def __init__(self, restrictions: _Optional[_Iterable[_Union[RestrictionResult, _Mapping]]] = ..., provenance: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ..., checkpoints: _Optional[_Iterable[_Union[CheckpointResult, _Mapping]]] = ..., trajectories: _Optional[_Iterable[_Union[Trajectory, _Mapping]]] = ..., stage_detection: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., calibration_checkpoint: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., cached_units: _Optional[_Iterable[_Union[CachedUnit, _Mapping]]] = ..., observables: _Optional[_Union[ObservablesResult, _Mapping]] = ...) -> None: ...

class CheckpointResult(_message.Message):
    __slots__ = ("step", "name", "status", "message", "identity", "restrictions", "cached_restrictions", "provenance", "warnings")
    STEP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    RESTRICTIONS_FIELD_NUMBER: _ClassVar[int]
    CACHED_RESTRICTIONS_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    step: int
    name: str
    status: str
    message: str
    identity: str
    restrictions: _containers.RepeatedCompositeFieldContainer[RestrictionResult]
    cached_restrictions: _containers.RepeatedScalarFieldContainer[str]
    provenance: _struct_pb2.Struct
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, step: _Optional[int] = ..., name: _Optional[str] = ..., status: _Optional[str] = ..., message: _Optional[str] = ..., identity: _Optional[str] = ..., restrictions: _Optional[_Iterable[_Union[RestrictionResult, _Mapping]]] = ..., cached_restrictions: _Optional[_Iterable[str]] = ..., provenance: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class TrajectoryPoint(_message.Message):
    __slots__ = ("step", "llc_mean", "llc_std", "llc_sem", "llc_half_width", "cached")
    STEP_FIELD_NUMBER: _ClassVar[int]
    LLC_MEAN_FIELD_NUMBER: _ClassVar[int]
    LLC_STD_FIELD_NUMBER: _ClassVar[int]
    LLC_SEM_FIELD_NUMBER: _ClassVar[int]
    LLC_HALF_WIDTH_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    step: int
    llc_mean: float
    llc_std: float
    llc_sem: float
    llc_half_width: float
    cached: bool
    def __init__(self, step: _Optional[int] = ..., llc_mean: _Optional[float] = ..., llc_std: _Optional[float] = ..., llc_sem: _Optional[float] = ..., llc_half_width: _Optional[float] = ..., cached: _Optional[bool] = ...) -> None: ...

class StageBoundary(_message.Message):
    __slots__ = ("step", "step_low", "step_high", "confidence", "slope_before", "slope_after", "delta_chi2")
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEP_LOW_FIELD_NUMBER: _ClassVar[int]
    STEP_HIGH_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SLOPE_BEFORE_FIELD_NUMBER: _ClassVar[int]
    SLOPE_AFTER_FIELD_NUMBER: _ClassVar[int]
    DELTA_CHI2_FIELD_NUMBER: _ClassVar[int]
    step: int
    step_low: int
    step_high: int
    confidence: float
    slope_before: float
    slope_after: float
    delta_chi2: float
    def __init__(self, step: _Optional[int] = ..., step_low: _Optional[int] = ..., step_high: _Optional[int] = ..., confidence: _Optional[float] = ..., slope_before: _Optional[float] = ..., slope_after: _Optional[float] = ..., delta_chi2: _Optional[float] = ...) -> None: ...

class Trajectory(_message.Message):
    __slots__ = ("restriction", "points", "boundaries")
    RESTRICTION_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    BOUNDARIES_FIELD_NUMBER: _ClassVar[int]
    restriction: str
    points: _containers.RepeatedCompositeFieldContainer[TrajectoryPoint]
    boundaries: _containers.RepeatedCompositeFieldContainer[StageBoundary]
    def __init__(self, restriction: _Optional[str] = ..., points: _Optional[_Iterable[_Union[TrajectoryPoint, _Mapping]]] = ..., boundaries: _Optional[_Iterable[_Union[StageBoundary, _Mapping]]] = ...) -> None: ...

class CachedUnit(_message.Message):
    __slots__ = ("step", "restriction")
    STEP_FIELD_NUMBER: _ClassVar[int]
    RESTRICTION_FIELD_NUMBER: _ClassVar[int]
    step: int
    restriction: str
    def __init__(self, step: _Optional[int] = ..., restriction: _Optional[str] = ...) -> None: ...

class RestrictionPreview(_message.Message):
    __slots__ = ("name", "tensors", "elements")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensors: _containers.RepeatedCompositeFieldContainer[MovedTensor]
    elements: int
    def __init__(self, name: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[MovedTensor, _Mapping]]] = ..., elements: _Optional[int] = ...) -> None: ...

class ChainProgressEvent(_message.Message):
    __slots__ = ("restriction", "chain", "step", "total_steps", "llc_running", "checkpoint_step")
    RESTRICTION_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LLC_RUNNING_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_STEP_FIELD_NUMBER: _ClassVar[int]
    restriction: str
    chain: int
    step: int
    total_steps: int
    llc_running: float
    checkpoint_step: int
    def __init__(self, restriction: _Optional[str] = ..., chain: _Optional[int] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., llc_running: _Optional[float] = ..., checkpoint_step: _Optional[int] = ...) -> None: ...

class ChainStatusEvent(_message.Message):
    __slots__ = ("restriction", "chain", "state", "llc", "attempt", "message", "checkpoint_step")
    RESTRICTION_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LLC_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_STEP_FIELD_NUMBER: _ClassVar[int]
    restriction: str
    chain: int
    state: ChainState
    llc: float
    attempt: int
    message: str
    checkpoint_step: int
    def __init__(self, restriction: _Optional[str] = ..., chain: _Optional[int] = ..., state: _Optional[_Union[ChainState, str]] = ..., llc: _Optional[float] = ..., attempt: _Optional[int] = ..., message: _Optional[str] = ..., checkpoint_step: _Optional[int] = ...) -> None: ...

class StartedEvent(_message.Message):
    __slots__ = ("chains_total", "restrictions")
    CHAINS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    RESTRICTIONS_FIELD_NUMBER: _ClassVar[int]
    chains_total: int
    restrictions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, chains_total: _Optional[int] = ..., restrictions: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchEstimateResponse(_message.Message):
    __slots__ = ("seq", "time", "snapshot", "started", "progress", "chain", "preview")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: _timestamp_pb2.Timestamp
    snapshot: Estimate
    started: StartedEvent
    progress: ChainProgressEvent
    chain: ChainStatusEvent
    preview: PreviewRestrictionsResponse
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., snapshot: _Optional[_Union[Estimate, _Mapping]] = ..., started: _Optional[_Union[StartedEvent, _Mapping]] = ..., progress: _Optional[_Union[ChainProgressEvent, _Mapping]] = ..., chain: _Optional[_Union[ChainStatusEvent, _Mapping]] = ..., preview: _Optional[_Union[PreviewRestrictionsResponse, _Mapping]] = ...) -> None: ...

class ObservableDataset(_message.Message):
    __slots__ = ("name", "dataset")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    name: str
    dataset: DatasetRef
    def __init__(self, name: _Optional[str] = ..., dataset: _Optional[_Union[DatasetRef, _Mapping]] = ...) -> None: ...

class Observables(_message.Message):
    __slots__ = ("datasets", "granularity", "every", "max_examples", "include_sampling")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    EVERY_FIELD_NUMBER: _ClassVar[int]
    MAX_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[ObservableDataset]
    granularity: Granularity
    every: int
    max_examples: int
    include_sampling: bool
    def __init__(self, datasets: _Optional[_Iterable[_Union[ObservableDataset, _Mapping]]] = ..., granularity: _Optional[_Union[Granularity, str]] = ..., every: _Optional[int] = ..., max_examples: _Optional[int] = ..., include_sampling: _Optional[bool] = ...) -> None: ...

class ArtifactFile(_message.Message):
    __slots__ = ("name", "bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    bytes: int
    def __init__(self, name: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...

class ObservablesResult(_message.Message):
    __slots__ = ("files", "granularity", "every", "examples", "values", "bif_mean", "susceptibility_mean", "warnings")
    class ExamplesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    FILES_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    EVERY_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    BIF_MEAN_FIELD_NUMBER: _ClassVar[int]
    SUSCEPTIBILITY_MEAN_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[ArtifactFile]
    granularity: Granularity
    every: int
    examples: _containers.ScalarMap[str, int]
    values: int
    bif_mean: _struct_pb2.Struct
    susceptibility_mean: _struct_pb2.Struct
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, files: _Optional[_Iterable[_Union[ArtifactFile, _Mapping]]] = ..., granularity: _Optional[_Union[Granularity, str]] = ..., every: _Optional[int] = ..., examples: _Optional[_Mapping[str, int]] = ..., values: _Optional[int] = ..., bif_mean: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., susceptibility_mean: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class FetchArtifactRequest(_message.Message):
    __slots__ = ("estimate_id", "file", "chunk_bytes")
    ESTIMATE_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    estimate_id: str
    file: str
    chunk_bytes: int
    def __init__(self, estimate_id: _Optional[str] = ..., file: _Optional[str] = ..., chunk_bytes: _Optional[int] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("file", "offset", "data", "total_bytes")
    FILE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    file: str
    offset: int
    data: bytes
    total_bytes: int
    def __init__(self, file: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ...) -> None: ...
