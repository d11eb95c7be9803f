"""Sources of the gRPC contracts (a buf module: ``recsys/v2``, ``recsys/stage/v1``; deprecated ``legacy/``) and
their generator (``python -m protos.generate``); the generated modules live in the top-level ``recsys`` package."""
