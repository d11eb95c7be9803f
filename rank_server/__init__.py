"""Rank stage: scores recalled candidates with ONNX models and fuses task scores (DESIGN §1)."""
