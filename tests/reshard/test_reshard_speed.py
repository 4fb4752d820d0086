"""Key moving speed (reported, not asserted as a target): 100-byte values, SCAN + batched MIGRATE."""

from __future__ import annotations

import json
import os

import pytest
from reshard_helpers import load_keys

N_KEYS = int(os.environ.get("KVSTORE_RESHARD_SPEED_KEYS", "200000"))
PARALLEL = os.environ.get("KVSTORE_RESHARD_SPEED_PARALLEL", "4")


@pytest.mark.slow
@pytest.mark.parametrize("batch", [int(b) for b in os.environ.get("KVSTORE_RESHARD_SPEED_BATCH", "100").split(",")])
def test_key_moving_speed_with_100_byte_values(cluster, batch: int) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=2)
    keys = [f"speed:{i}".encode() for i in range(N_KEYS)]
    # Everything on g1 first: give g1 every slot, so half of the keys move when 8192-16383 go to g2.
    g1 = c.master("g1")
    load_keys(g1, keys)
    slots = c.store.read_slots()
    c.store.set_slots(slots.value.assign([(0, 16383)], "g1"), slots.version)
    result = c.admin("reshard", "--slots", "8192-16383", "--to", "g2", "--slots-per-step", "8192",
                     "--batch", str(batch), "--parallel", PARALLEL, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["keys_moved"] + g1.dbsize() == N_KEYS
    print(f"\nreshard speed: batch {batch}, parallel {PARALLEL}: {out['keys_moved']} keys in {out['move_seconds']}s "
          f"= {out['keys_per_second']:,} keys/s (whole command {out['seconds']}s)")
    c.check_ok()
