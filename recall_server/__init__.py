"""Recall stage: turns a user into ~1,000 candidates from several channels (docs/ARCHITECTURE.md §1)."""
