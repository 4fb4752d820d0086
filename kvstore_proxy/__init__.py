"""kvstore-proxy: the Redis-protocol server that shards keys over groups by slot."""
