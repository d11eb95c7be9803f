"""How the export models read categorical codes and multi-hot bags (shared by two-tower, DeepFM, MMoE and
the pre-rank, so training and the ONNX graphs treat bad codes and empty bags the same way everywhere).

Codes outside ``[0, vocab)`` read as "unknown" (0) instead of failing the Gather or reading another
field's rows. Several fields share one embedding table addressed by ``field offset + code``: one Gather
instead of one per field, in training and in the ONNX graph.
"""
from __future__ import annotations

import torch
from torch import nn


def valid_codes(x: torch.Tensor, vocab: torch.Tensor | int) -> torch.Tensor:
    """``x`` with every code outside ``[0, vocab)`` replaced by 0."""
    return torch.where((x >= 0) & (x < vocab), x, torch.zeros_like(x))


def register_field_offsets(module: nn.Module, field_vocab: list[int]) -> int:
    """Give ``module`` the non-persistent buffers ``vocab`` and ``offsets`` of its fields' shared table;
    returns the table's row count (the sum of the vocabularies)."""
    vocab = torch.tensor([int(v) for v in field_vocab], dtype=torch.int64)
    module.register_buffer("vocab", vocab, persistent=False)
    module.register_buffer("offsets", torch.cumsum(vocab, 0) - vocab, persistent=False)
    return int(vocab.sum())


def field_rows(module: nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """Rows of the shared table for int64 codes [B, F] (see :func:`register_field_offsets`); fields switched
    off by :func:`register_field_mask` read their "unknown" row."""
    mask = getattr(module, "field_mask", None)
    if mask is not None:
        codes = codes * mask
    return valid_codes(codes, module.vocab) + module.offsets


def register_field_mask(module: nn.Module, field_names: list[str], off: tuple[str, ...]) -> None:
    """A non-persistent int64 buffer ``field_mask`` [F]: 0 for the fields named in ``off`` (their codes read
    as unknown, in training and in the ONNX graph), 1 for the others. Nothing when ``off`` is empty."""
    if off:
        mask = torch.tensor([0 if name in off else 1 for name in field_names], dtype=torch.int64)
        module.register_buffer("field_mask", mask, persistent=False)


def bag_weights(bag: torch.Tensor) -> torch.Tensor:
    """Multi-hot float32 [B, G] → weights of a mean over the active entries; an empty bag gives zeros."""
    return bag / bag.sum(1, keepdim=True).clamp(min=1.0)
