from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RerankMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RERANK_METHOD_UNSPECIFIED: _ClassVar[RerankMethod]
    RERANK_METHOD_NONE: _ClassVar[RerankMethod]
    RERANK_METHOD_MMR: _ClassVar[RerankMethod]
    RERANK_METHOD_DPP: _ClassVar[RerankMethod]
    RERANK_METHOD_DPP_WINDOW: _ClassVar[RerankMethod]
RERANK_METHOD_UNSPECIFIED: RerankMethod
RERANK_METHOD_NONE: RerankMethod
RERANK_METHOD_MMR: RerankMethod
RERANK_METHOD_DPP: RerankMethod
RERANK_METHOD_DPP_WINDOW: RerankMethod

class RerankParams(_message.Message):
    __slots__ = ("mmr_lambda", "alpha", "window", "epsilon")
    MMR_LAMBDA_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    mmr_lambda: float
    alpha: float
    window: int
    epsilon: float
    def __init__(self, mmr_lambda: _Optional[float] = ..., alpha: _Optional[float] = ..., window: _Optional[int] = ..., epsilon: _Optional[float] = ...) -> None: ...

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
    method: RerankMethod
    params: RerankParams
    snapshot_version: str
    promoted: bytes
    exclude_idx: bytes
    def __init__(self, item_idx: _Optional[bytes] = ..., scores: _Optional[bytes] = ..., k: _Optional[int] = ..., method: _Optional[_Union[RerankMethod, str]] = ..., params: _Optional[_Union[RerankParams, _Mapping]] = ..., snapshot_version: _Optional[str] = ..., promoted: _Optional[bytes] = ..., exclude_idx: _Optional[bytes] = ...) -> None: ...

class RerankResponse(_message.Message):
    __slots__ = ("positions", "method", "snapshot_version", "relaxed_rules")
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    RELAXED_RULES_FIELD_NUMBER: _ClassVar[int]
    positions: bytes
    method: RerankMethod
    snapshot_version: str
    relaxed_rules: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, positions: _Optional[bytes] = ..., method: _Optional[_Union[RerankMethod, str]] = ..., snapshot_version: _Optional[str] = ..., relaxed_rules: _Optional[_Iterable[str]] = ...) -> None: ...
