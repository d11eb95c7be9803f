from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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

class RecallRequest(_message.Message):
    __slots__ = ("user_id", "override_history", "history_item_ids", "quotas", "n", "exclude_item_ids", "snapshot_version", "filters", "include_exposed")
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
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EXPOSED_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    override_history: bool
    history_item_ids: _containers.RepeatedScalarFieldContainer[str]
    quotas: _containers.ScalarMap[str, int]
    n: int
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    snapshot_version: str
    filters: _containers.RepeatedCompositeFieldContainer[AttributeFilter]
    include_exposed: bool
    def __init__(self, user_id: _Optional[str] = ..., override_history: _Optional[bool] = ..., history_item_ids: _Optional[_Iterable[str]] = ..., quotas: _Optional[_Mapping[str, int]] = ..., n: _Optional[int] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., snapshot_version: _Optional[str] = ..., filters: _Optional[_Iterable[_Union[AttributeFilter, _Mapping]]] = ..., include_exposed: _Optional[bool] = ...) -> None: ...

class RecallResponse(_message.Message):
    __slots__ = ("item_idx", "scores", "channel_masks", "channel_names", "snapshot_version", "cold_start", "eligible_items")
    ITEM_IDX_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_MASKS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_NAMES_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    item_idx: bytes
    scores: bytes
    channel_masks: bytes
    channel_names: _containers.RepeatedScalarFieldContainer[str]
    snapshot_version: str
    cold_start: bool
    eligible_items: int
    def __init__(self, item_idx: _Optional[bytes] = ..., scores: _Optional[bytes] = ..., channel_masks: _Optional[bytes] = ..., channel_names: _Optional[_Iterable[str]] = ..., snapshot_version: _Optional[str] = ..., cold_start: _Optional[bool] = ..., eligible_items: _Optional[int] = ...) -> None: ...
