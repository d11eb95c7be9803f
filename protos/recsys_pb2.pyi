from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Method(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METHOD_DEFAULT: _ClassVar[Method]
    NONE: _ClassVar[Method]
    MMR: _ClassVar[Method]
    DPP: _ClassVar[Method]
    DPP_WINDOW: _ClassVar[Method]
METHOD_DEFAULT: Method
NONE: Method
MMR: Method
DPP: Method
DPP_WINDOW: Method

class Context(_message.Message):
    __slots__ = ("timestamp", "device", "page")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    timestamp: int
    device: str
    page: str
    def __init__(self, timestamp: _Optional[int] = ..., device: _Optional[str] = ..., page: _Optional[str] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "k", "context", "exclude_item_ids", "deadline_ms", "debug")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    DEBUG_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    k: int
    context: Context
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    deadline_ms: int
    debug: bool
    def __init__(self, user_id: _Optional[str] = ..., k: _Optional[int] = ..., context: _Optional[_Union[Context, _Mapping]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., deadline_ms: _Optional[int] = ..., debug: _Optional[bool] = ...) -> None: ...

class StageTiming(_message.Message):
    __slots__ = ("stage", "ms")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    ms: float
    def __init__(self, stage: _Optional[str] = ..., ms: _Optional[float] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("item_ids", "scores", "task_names", "task_scores", "channel_names", "channel_masks", "stage_timings", "degraded", "snapshot_version", "request_id", "titles", "relaxed_rules", "experiments")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TASK_NAMES_FIELD_NUMBER: _ClassVar[int]
    TASK_SCORES_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_NAMES_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_MASKS_FIELD_NUMBER: _ClassVar[int]
    STAGE_TIMINGS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TITLES_FIELD_NUMBER: _ClassVar[int]
    RELAXED_RULES_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.RepeatedScalarFieldContainer[float]
    task_names: _containers.RepeatedScalarFieldContainer[str]
    task_scores: _containers.RepeatedScalarFieldContainer[float]
    channel_names: _containers.RepeatedScalarFieldContainer[str]
    channel_masks: _containers.RepeatedScalarFieldContainer[int]
    stage_timings: _containers.RepeatedCompositeFieldContainer[StageTiming]
    degraded: _containers.RepeatedScalarFieldContainer[str]
    snapshot_version: str
    request_id: str
    titles: _containers.RepeatedScalarFieldContainer[str]
    relaxed_rules: _containers.RepeatedScalarFieldContainer[str]
    experiments: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., scores: _Optional[_Iterable[float]] = ..., task_names: _Optional[_Iterable[str]] = ..., task_scores: _Optional[_Iterable[float]] = ..., channel_names: _Optional[_Iterable[str]] = ..., channel_masks: _Optional[_Iterable[int]] = ..., stage_timings: _Optional[_Iterable[_Union[StageTiming, _Mapping]]] = ..., degraded: _Optional[_Iterable[str]] = ..., snapshot_version: _Optional[str] = ..., request_id: _Optional[str] = ..., titles: _Optional[_Iterable[str]] = ..., relaxed_rules: _Optional[_Iterable[str]] = ..., experiments: _Optional[_Iterable[str]] = ...) -> None: ...

class RecallRequest(_message.Message):
    __slots__ = ("user_id", "override_history", "history_item_ids", "quotas", "n", "exclude_item_ids", "snapshot_version")
    class QuotasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    HISTORY_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    override_history: bool
    history_item_ids: _containers.RepeatedScalarFieldContainer[str]
    quotas: _containers.ScalarMap[str, int]
    n: int
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    snapshot_version: str
    def __init__(self, user_id: _Optional[str] = ..., override_history: _Optional[bool] = ..., history_item_ids: _Optional[_Iterable[str]] = ..., quotas: _Optional[_Mapping[str, int]] = ..., n: _Optional[int] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., snapshot_version: _Optional[str] = ...) -> None: ...

class RecallResponse(_message.Message):
    __slots__ = ("item_idx", "scores", "channel_masks", "channel_names", "snapshot_version", "cold_start")
    ITEM_IDX_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_MASKS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_NAMES_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    item_idx: bytes
    scores: bytes
    channel_masks: bytes
    channel_names: _containers.RepeatedScalarFieldContainer[str]
    snapshot_version: str
    cold_start: bool
    def __init__(self, item_idx: _Optional[bytes] = ..., scores: _Optional[bytes] = ..., channel_masks: _Optional[bytes] = ..., channel_names: _Optional[_Iterable[str]] = ..., snapshot_version: _Optional[str] = ..., cold_start: _Optional[bool] = ...) -> None: ...

class RankRequest(_message.Message):
    __slots__ = ("user_id", "context", "item_idx", "snapshot_version", "fusion", "channel_masks", "channel_names", "recall_scores")
    class FusionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDX_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_MASKS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_NAMES_FIELD_NUMBER: _ClassVar[int]
    RECALL_SCORES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    context: Context
    item_idx: bytes
    snapshot_version: str
    fusion: _containers.ScalarMap[str, float]
    channel_masks: bytes
    channel_names: _containers.RepeatedScalarFieldContainer[str]
    recall_scores: bytes
    def __init__(self, user_id: _Optional[str] = ..., context: _Optional[_Union[Context, _Mapping]] = ..., item_idx: _Optional[bytes] = ..., snapshot_version: _Optional[str] = ..., fusion: _Optional[_Mapping[str, float]] = ..., channel_masks: _Optional[bytes] = ..., channel_names: _Optional[_Iterable[str]] = ..., recall_scores: _Optional[bytes] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("item_idx", "fused", "task_names", "task_scores", "dropped_unknown", "snapshot_version")
    ITEM_IDX_FIELD_NUMBER: _ClassVar[int]
    FUSED_FIELD_NUMBER: _ClassVar[int]
    TASK_NAMES_FIELD_NUMBER: _ClassVar[int]
    TASK_SCORES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    item_idx: bytes
    fused: bytes
    task_names: _containers.RepeatedScalarFieldContainer[str]
    task_scores: bytes
    dropped_unknown: int
    snapshot_version: str
    def __init__(self, item_idx: _Optional[bytes] = ..., fused: _Optional[bytes] = ..., task_names: _Optional[_Iterable[str]] = ..., task_scores: _Optional[bytes] = ..., dropped_unknown: _Optional[int] = ..., snapshot_version: _Optional[str] = ...) -> None: ...

class RerankParams(_message.Message):
    __slots__ = ("alpha", "window", "epsilon")
    LAMBDA_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    alpha: float
    window: int
    epsilon: float
    def __init__(self, alpha: _Optional[float] = ..., window: _Optional[int] = ..., epsilon: _Optional[float] = ..., **kwargs) -> None: ...

class RerankRequest(_message.Message):
    __slots__ = ("item_idx", "scores", "k", "method", "params", "snapshot_version", "promoted", "exclude_idx")
    ITEM_IDX_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDX_FIELD_NUMBER: _ClassVar[int]
    item_idx: bytes
    scores: bytes
    k: int
    method: Method
    params: RerankParams
    snapshot_version: str
    promoted: bytes
    exclude_idx: bytes
    def __init__(self, item_idx: _Optional[bytes] = ..., scores: _Optional[bytes] = ..., k: _Optional[int] = ..., method: _Optional[_Union[Method, str]] = ..., params: _Optional[_Union[RerankParams, _Mapping]] = ..., snapshot_version: _Optional[str] = ..., promoted: _Optional[bytes] = ..., exclude_idx: _Optional[bytes] = ...) -> None: ...

class RerankResponse(_message.Message):
    __slots__ = ("positions", "method", "snapshot_version", "relaxed_rules")
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    RELAXED_RULES_FIELD_NUMBER: _ClassVar[int]
    positions: bytes
    method: str
    snapshot_version: str
    relaxed_rules: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, positions: _Optional[bytes] = ..., method: _Optional[str] = ..., snapshot_version: _Optional[str] = ..., relaxed_rules: _Optional[_Iterable[str]] = ...) -> None: ...
