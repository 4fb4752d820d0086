"""``python -m kvstore_proxy``: same as the ``kvstore-proxy`` command."""

from kvstore_proxy.cli import main

if __name__ == "__main__":
    main()
