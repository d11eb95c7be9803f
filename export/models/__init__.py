"""The trained models (two-tower, MMoE, DeepFM, pre-rank), their shared field codes, the training loop, ONNX and int8."""
