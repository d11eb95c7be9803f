"""Server reflection under both protocol names: ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcio-reflection ships only v1alpha; clients built on newer gRPC (grpcurl >= 1.9, grpc-js tooling, Postman)
ask v1 first and got UNIMPLEMENTED. v1 is v1alpha with the package renamed (same messages, same field numbers),
so one servicer answers both: v1 is a generic handler over the v1alpha message classes, and its descriptor (the
v1alpha file re-packaged) is added to the default pool so ``describe grpc.reflection.v1.ServerReflection``
resolves too.
"""
from __future__ import annotations

import functools

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc.experimental import aio as grpc_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"


@functools.cache
def register_v1_descriptor() -> None:
    """Add ``grpc/reflection/v1/reflection.proto`` (v1alpha re-packaged) to the default descriptor pool, once."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName("grpc/reflection/v1/reflection.proto")
        return  # another library registered the real one
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old = proto.package
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = V1_PACKAGE
    for message in proto.message_type:
        for fld in message.field:
            if fld.type_name.startswith(f".{old}."):
                fld.type_name = f".{V1_PACKAGE}." + fld.type_name[len(old) + 2:]
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(f".{old}.", f".{V1_PACKAGE}.")
            method.output_type = method.output_type.replace(f".{old}.", f".{V1_PACKAGE}.")
    pool.AddSerializedFile(proto.SerializeToString())


def enable_reflection(service_names: list[str], server: grpc.Server) -> None:
    """Serve reflection v1 and v1alpha on ``server`` (a ``grpc.Server`` or a ``grpc.aio.Server``: the aio one
    gets grpcio-reflection's asynchronous servicer), listing ``service_names`` plus both reflection services."""
    register_v1_descriptor()
    names = [*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME]
    is_aio = isinstance(server, grpc_aio.Server)
    servicer = reflection.aio.ReflectionServicer(names) if is_aio else reflection.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)})
    server.add_generic_rpc_handlers((v1,))
