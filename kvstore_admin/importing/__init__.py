"""``kvstore-admin import``: copy a standalone Redis into the cluster, follow its writes, cut over."""
