"""Public API v2 (``protos/recsys/v2/recommend_service.proto``)."""
