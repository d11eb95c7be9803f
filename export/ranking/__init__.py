"""The ranker section of the export: replayed training data, the choices made on validation, the feature ablation."""
