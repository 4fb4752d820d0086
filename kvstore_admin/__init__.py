"""kvstore-admin: the operator's CLI (create, grow, reshard, switch over, inspect) and local clusters."""
