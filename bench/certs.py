"""Certificates made with openssl for benchmarks and tests: a CA and certificates it signs (EC P-256)."""

from __future__ import annotations

import subprocess
from pathlib import Path


class Certs:
    """CAs and certificates for 127.0.0.1/localhost in ``directory`` (EC P-256 keys: quick to make)."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)

    def ca(self, name: str) -> tuple[str, str]:
        """A self-signed CA: (certificate, key) paths."""
        crt, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", str(key), "-out", str(crt), "-days", "30", "-subj", f"/CN={name}")
        return str(crt), str(key)

    def issue(self, name: str, ca: tuple[str, str], days: int = 30) -> tuple[str, str]:
        """A certificate for 127.0.0.1/localhost signed by ``ca``; ``days=-1`` makes an expired one."""
        crt, key, csr = (self.dir / f"{name}.{ext}" for ext in ("crt", "key", "csr"))
        ext = self.dir / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        self._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
        self._openssl("x509", "-req", "-in", str(csr), "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
                      "-out", str(crt), "-days", str(days), "-extfile", str(ext))
        return str(crt), str(key)
