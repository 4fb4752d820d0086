"""Cluster operations the sentinel and the admin both perform; each takes the fence it acts under."""
