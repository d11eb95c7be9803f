"""Gateway: the public Recommend service that runs the funnel under a deadline (docs/ARCHITECTURE.md §1, §4)."""
