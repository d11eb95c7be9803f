"""Tools people run by hand against a snapshot or a live cluster: the demo, the live evaluator, streaming replay."""
