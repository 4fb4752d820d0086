"""``python -m kvstore_sentinel``: same as the ``kvstore-sentinel`` command."""

from kvstore_sentinel.cli import main

main()
