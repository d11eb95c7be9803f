"""Gateway: the public Recommend service that runs the funnel under a deadline (DESIGN §1, §5)."""
