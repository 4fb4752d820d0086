"""The live progress record (reshard-progress) and what status and the bar make of it (pure)."""

from __future__ import annotations

import time

import pytest

from kvstore_admin.reshard_report import progress_text
from kvstore_admin.status import reshard_text
from kvstore_cluster.codec import ModelError
from kvstore_cluster.reshard_state import ReshardProgress


def _progress(**changes: object) -> ReshardProgress:
    fields: dict[str, object] = dict(keys_moved=150_000, keys_total=200_000, bytes_moved=24_000_000, seconds=1.5,
                                     keys_per_second=100_000.0, eta_seconds=0.5, longest_stall_ms=4.2)
    fields.update(changes)
    return ReshardProgress(**fields)  # type: ignore[arg-type]


def test_progress_round_trips_and_reads_as_a_line() -> None:
    p = _progress()
    assert ReshardProgress.decode(p.encode()) == p
    assert progress_text(p.to_json()) == ("150,000/~200,000 keys, 100,000 keys/s, ETA 0s, longest stall 4.2 ms")
    assert "ETA -" in progress_text(_progress(eta_seconds=None, keys_per_second=0.0).to_json())


@pytest.mark.parametrize(("raw", "problem"), [
    (b"{garbage", "not valid JSON"),
    (b'{"keys_moved": -1, "keys_total": 0, "bytes_moved": 0, "seconds": 0, "keys_per_second": 0, '
     b'"eta_seconds": null, "longest_stall_ms": 0, "updated_at": 0}', "cannot be negative"),
    (b'{"keys_moved": 1, "keys_total": 1, "bytes_moved": 0, "seconds": 0, "keys_per_second": 0, '
     b'"eta_seconds": "soon", "longest_stall_ms": 0, "updated_at": 0}', "eta_seconds"),
    (b'{"keys_moved": 1}', "keys_total"),
])
def test_garbage_progress_is_refused_with_the_reason(raw: bytes, problem: str) -> None:
    with pytest.raises(ModelError, match="reshard-progress") as exc:
        ReshardProgress.decode(raw)
    assert problem in str(exc.value)


def test_status_shows_the_live_figures_only_while_the_executor_reports() -> None:
    r = {"step": 2, "steps": 6, "phase": "moving", "aborting": False, "no_data": False, "slots_done": 1024,
         "slots_total": 5461, "keys_moved": 37_000, "request_text": "command=rebalance",
         "moving": [{"lo": 0, "hi": 1023, "from": "g1", "to": "g3"}]}
    fresh = _progress(updated_at=time.time()).to_json()
    lines = reshard_text({**r, "progress": fresh})
    assert any("running: 150,000/~200,000 keys, 100,000 keys/s" in line for line in lines)
    stale = _progress(updated_at=time.time() - 60).to_json()  # an executor that died, its node not yet expired
    assert not any("running" in line for line in reshard_text({**r, "progress": stale}))
    assert any("--resume" in line for line in reshard_text({**r, "progress": None}))
