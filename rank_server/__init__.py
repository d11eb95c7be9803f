"""Rank stage: scores recalled candidates with ONNX models and fuses task scores (docs/ARCHITECTURE.md §1)."""
