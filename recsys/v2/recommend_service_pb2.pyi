from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_IMPRESSION: _ClassVar[EventType]
    EVENT_TYPE_CLICK: _ClassVar[EventType]
    EVENT_TYPE_LIKE: _ClassVar[EventType]
    EVENT_TYPE_RATING: _ClassVar[EventType]
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_IMPRESSION: EventType
EVENT_TYPE_CLICK: EventType
EVENT_TYPE_LIKE: EventType
EVENT_TYPE_RATING: EventType

class Context(_message.Message):
    __slots__ = ("timestamp",)
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    timestamp: int
    def __init__(self, timestamp: _Optional[int] = ...) -> None: ...

class ValueSet(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class Range(_message.Message):
    __slots__ = ("min", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: float
    max: float
    def __init__(self, min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class AttributeFilter(_message.Message):
    __slots__ = ("attribute", "any_of", "none_of", "range")
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    ANY_OF_FIELD_NUMBER: _ClassVar[int]
    NONE_OF_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    attribute: str
    any_of: ValueSet
    none_of: ValueSet
    range: Range
    def __init__(self, attribute: _Optional[str] = ..., any_of: _Optional[_Union[ValueSet, _Mapping]] = ..., none_of: _Optional[_Union[ValueSet, _Mapping]] = ..., range: _Optional[_Union[Range, _Mapping]] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "k", "context", "exclude_item_ids", "deadline_ms", "debug", "filters", "include_exposed")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    DEBUG_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EXPOSED_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    k: int
    context: Context
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    deadline_ms: int
    debug: bool
    filters: _containers.RepeatedCompositeFieldContainer[AttributeFilter]
    include_exposed: bool
    def __init__(self, user_id: _Optional[str] = ..., k: _Optional[int] = ..., context: _Optional[_Union[Context, _Mapping]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., deadline_ms: _Optional[int] = ..., debug: _Optional[bool] = ..., filters: _Optional[_Iterable[_Union[AttributeFilter, _Mapping]]] = ..., include_exposed: _Optional[bool] = ...) -> None: ...

class ItemAttribute(_message.Message):
    __slots__ = ("name", "values", "number")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: _containers.RepeatedScalarFieldContainer[str]
    number: float
    def __init__(self, name: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ..., number: _Optional[float] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "score", "task_scores", "channels", "title", "attributes")
    class TaskScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TASK_SCORES_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    task_scores: _containers.ScalarMap[str, float]
    channels: _containers.RepeatedScalarFieldContainer[str]
    title: str
    attributes: _containers.RepeatedCompositeFieldContainer[ItemAttribute]
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., task_scores: _Optional[_Mapping[str, float]] = ..., channels: _Optional[_Iterable[str]] = ..., title: _Optional[str] = ..., attributes: _Optional[_Iterable[_Union[ItemAttribute, _Mapping]]] = ...) -> None: ...

class StageTiming(_message.Message):
    __slots__ = ("stage", "ms")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    ms: float
    def __init__(self, stage: _Optional[str] = ..., ms: _Optional[float] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "stage_timings", "degraded_stages", "snapshot_version", "request_id", "relaxed_rules", "experiments", "eligible_items", "fewer_than_k", "quality_level")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    STAGE_TIMINGS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_STAGES_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RELAXED_RULES_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    FEWER_THAN_K_FIELD_NUMBER: _ClassVar[int]
    QUALITY_LEVEL_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    stage_timings: _containers.RepeatedCompositeFieldContainer[StageTiming]
    degraded_stages: _containers.RepeatedScalarFieldContainer[str]
    snapshot_version: str
    request_id: str
    relaxed_rules: _containers.RepeatedScalarFieldContainer[str]
    experiments: _containers.RepeatedScalarFieldContainer[str]
    eligible_items: int
    fewer_than_k: bool
    quality_level: int
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., stage_timings: _Optional[_Iterable[_Union[StageTiming, _Mapping]]] = ..., degraded_stages: _Optional[_Iterable[str]] = ..., snapshot_version: _Optional[str] = ..., request_id: _Optional[str] = ..., relaxed_rules: _Optional[_Iterable[str]] = ..., experiments: _Optional[_Iterable[str]] = ..., eligible_items: _Optional[int] = ..., fewer_than_k: _Optional[bool] = ..., quality_level: _Optional[int] = ...) -> None: ...

class FeedbackEvent(_message.Message):
    __slots__ = ("user_id", "item_id", "type", "value", "timestamp", "request_id", "event_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    type: EventType
    value: float
    timestamp: float
    request_id: str
    event_id: str
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., type: _Optional[_Union[EventType, str]] = ..., value: _Optional[float] = ..., timestamp: _Optional[float] = ..., request_id: _Optional[str] = ..., event_id: _Optional[str] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[FeedbackEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[FeedbackEvent, _Mapping]]] = ...) -> None: ...

class RejectedEvent(_message.Message):
    __slots__ = ("index", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    reason: str
    def __init__(self, index: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("accepted", "duplicate_indices", "rejected", "unknown_item_indices")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_INDICES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_ITEM_INDICES_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicate_indices: _containers.RepeatedScalarFieldContainer[int]
    rejected: _containers.RepeatedCompositeFieldContainer[RejectedEvent]
    unknown_item_indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, accepted: _Optional[int] = ..., duplicate_indices: _Optional[_Iterable[int]] = ..., rejected: _Optional[_Iterable[_Union[RejectedEvent, _Mapping]]] = ..., unknown_item_indices: _Optional[_Iterable[int]] = ...) -> None: ...
