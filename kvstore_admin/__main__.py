"""``python -m kvstore_admin``: the same as the kvstore-admin console script."""

from kvstore_admin.cli import main

main()
