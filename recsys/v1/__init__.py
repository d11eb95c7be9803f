"""Deprecated public API v1 (``protos/legacy/recsys/v1/recsys.proto``): served for one more release."""
