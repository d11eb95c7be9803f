"""Generated gRPC modules of the contracts (``python -m protos.generate``; sources in ``protos/``)."""
