"""Rerank stage: orders ranked candidates for relevance and diversity (docs/ARCHITECTURE.md §1)."""
