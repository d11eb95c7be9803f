from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RankContext(_message.Message):
    __slots__ = ("timestamp",)
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    timestamp: int
    def __init__(self, timestamp: _Optional[int] = ...) -> None: ...

class RankRequest(_message.Message):
    __slots__ = ("user_id", "context", "item_idx", "snapshot_version", "fusion", "channel_masks", "channel_names", "recall_scores", "prerank_keep", "prerank_order")
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
    PRERANK_KEEP_FIELD_NUMBER: _ClassVar[int]
    PRERANK_ORDER_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    context: RankContext
    item_idx: bytes
    snapshot_version: str
    fusion: _containers.ScalarMap[str, float]
    channel_masks: bytes
    channel_names: _containers.RepeatedScalarFieldContainer[str]
    recall_scores: bytes
    prerank_keep: int
    prerank_order: bool
    def __init__(self, user_id: _Optional[str] = ..., context: _Optional[_Union[RankContext, _Mapping]] = ..., item_idx: _Optional[bytes] = ..., snapshot_version: _Optional[str] = ..., fusion: _Optional[_Mapping[str, float]] = ..., channel_masks: _Optional[bytes] = ..., channel_names: _Optional[_Iterable[str]] = ..., recall_scores: _Optional[bytes] = ..., prerank_keep: _Optional[int] = ..., prerank_order: _Optional[bool] = ...) -> None: ...

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
