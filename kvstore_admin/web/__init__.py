"""``kvstore-admin web``: the live status page and its HTTP API (app.py), fed by ZooKeeper watches (live.py)."""
