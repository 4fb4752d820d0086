"""Reliability suite: a recorded-history workload, fault injection, and a checker of what the cluster kept."""
