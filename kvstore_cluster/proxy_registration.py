"""The ``proxies/<id>`` znode: a running proxy, the table versions it applied and the protocol versions it speaks.

Written (ephemeral) by each proxy after every table it applies; read by the reshard executor's
barrier and by ``kvstore-admin status`` / ``proxies`` (docs/design.md, "Proxy registration").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kvstore_cluster import codec
from kvstore_cluster.codec import ModelError

# The cross-process protocols a proxy takes part in, with the version this release implements.
# "migration": moves keys of migrating slots (the take script on the source, then the command on
# the target), holds newly marked slots until the reshard record says every proxy has the mark,
# holds requests of keys being moved in pieces, and registers a slots version only once the
# requests sent before it were answered. Version 1 MIGRATEd whole keys, big ones included.
MIGRATION = "migration"
# "keyrules": routes by the key rules of the keyrules znode, acknowledges their version
# (keyrules_version) once the requests routed by the previous rules were answered, and holds the
# requests of keys a rule change moves until the change is committed (docs/design.md, "Key rules").
KEYRULES = "keyrules"
PROTOCOLS: Mapping[str, int] = {MIGRATION: 2, KEYRULES: 1}


@dataclass(frozen=True, slots=True)
class ProxyRegistration:
    address: str  # HOST:PORT clients connect to
    pid: int
    started_at: float
    slots_version: int  # the slots znode version applied (-1: none yet)
    groups_version: int
    fenced: bool  # cut off from ZooKeeper: refusing keyed commands
    protocols: Mapping[str, int] = field(default_factory=lambda: dict(PROTOCOLS))
    keyrules_version: int = -1  # the keyrules znode version applied (-1: none, or no znode)

    def __post_init__(self) -> None:
        what = f"proxy {self.address}"
        codec.address(self.address, "proxy")
        for name, version in self.protocols.items():
            if not isinstance(name, str) or not isinstance(version, int) or isinstance(version, bool):
                raise ModelError(f"{what}: protocols must map names to integer versions")

    def speaks(self, protocol: str, version: int | None = None) -> bool:
        """Whether it implements ``protocol`` at ``version`` (default: this release's) or later."""
        wanted = PROTOCOLS[protocol] if version is None else version
        return self.protocols.get(protocol, 0) >= wanted

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "pid": self.pid, "started_at": self.started_at,
                "slots_version": self.slots_version, "groups_version": self.groups_version,
                "fenced": self.fenced, "keyrules_version": self.keyrules_version,
                "protocols": dict(self.protocols)}

    def encode(self) -> bytes:
        return codec.dump_object(self.to_json())

    @classmethod
    def decode(cls, raw: bytes | str) -> ProxyRegistration:
        what = "proxy registration"
        obj = codec.load_object(raw, what)
        return cls(
            address=codec.field(obj, "address", str, what),
            pid=codec.field(obj, "pid", int, what),
            started_at=codec.number(obj, "started_at", what),
            slots_version=codec.field(obj, "slots_version", int, what),
            groups_version=codec.field(obj, "groups_version", int, what),
            fenced=codec.field(obj, "fenced", bool, what),
            keyrules_version=_optional_int(obj, "keyrules_version", what),
            protocols=codec.field(obj, "protocols", dict, what),
        )


def _optional_int(obj: dict[str, Any], name: str, what: str) -> int:
    """A version a registration of an older release does not carry: -1 then."""
    value = codec.optional(obj, name, int, what)
    return -1 if value is None else value
