"""gRPC contracts of the cluster; ``recsys_pb2`` / ``recsys_pb2_grpc`` are generated from recsys.proto."""
from protos import recsys_pb2, recsys_pb2_grpc

__all__ = ["recsys_pb2", "recsys_pb2_grpc"]
