"""Rerank stage: orders ranked candidates for relevance and diversity (DESIGN §1)."""
