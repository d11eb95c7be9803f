from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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
