"""Offline evaluation with the serving code: recall metrics, the funnel table, the peers it is compared with."""
