"""Stage-to-stage contracts."""
