"""Writing a torch module as ONNX, the one way every export model does it."""
from __future__ import annotations

import warnings

import torch
from torch import nn


def export_onnx(model: nn.Module, dummy: tuple[torch.Tensor, ...], path: str, input_names: list[str],
                output_names: list[str], axes: dict[str, dict[int, str]] | None = None) -> None:
    """Write ``model`` to ``path`` (opset 17, TorchScript exporter) with a dynamic batch axis on every input
    and output (``axes``: name → {axis: symbol} in place of that, e.g. an input of one row broadcast against
    the batch), traced in eval mode on ``dummy``; the model's training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    axes = axes if axes is not None else {name: {0: "batch"} for name in [*input_names, *output_names]}
    # dynamo=False on purpose: the TorchScript exporter needs no onnxscript and handles dynamic_axes
    # directly; torch is pinned, so its deprecation notice is noise here.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, dummy, path, input_names=input_names, output_names=output_names,
                              dynamic_axes=axes, opset_version=17, dynamo=False)
    finally:
        model.train(was_training)
