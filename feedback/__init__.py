"""Real-time state from feedback: the durable event log and per-user state (recent history, exposure filter)."""
