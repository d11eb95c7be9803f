"""Recall artifacts: the i2i tables, the ANN index, the merge weights and quotas fitted on validation."""
