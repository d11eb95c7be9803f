"""The export's data: loading logs, the in-memory dataset, the temporal split, synthetic catalogues, histories."""
