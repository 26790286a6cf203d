"""Native TLS for the serve: one server context whose certificate pair follows the files on disk.

Every handshake is switched (SNI callback, called with or without a server name) to the newest pair that
loaded cleanly, so a certbot renewal reaches new viewers while open ones keep their session; a broken
renewal is logged and the previous pair stays in use.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import structlog

from shared import redaction
from shared.errors import DzoneError

log = structlog.get_logger(__name__)

_MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class CertificateError(DzoneError):
    """The pair cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class CertificateFiles:
    cert_file: Path
    key_file: Path
    password_file: Path | None = None
    min_version: str = "1.2"
    ciphers: str | None = None

    def paths(self) -> tuple[Path, ...]:
        return (self.cert_file, self.key_file) + ((self.password_file,) if self.password_file else ())


def _read_password(path: Path) -> bytes:
    try:
        password = path.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise CertificateError(f"DZONE_TLS_KEY_PASSWORD_FILE {path}: {exc.strerror or exc}") from None
    redaction.add(password.decode(errors="replace"))
    return password


def _check_readable(path: Path, variable: str) -> None:
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise CertificateError(f"{variable} {path}: {exc.strerror or exc}") from None


def _looks_encrypted(path: Path) -> bool:
    """PKCS#8 "ENCRYPTED PRIVATE KEY" or a traditional key's "Proc-Type: 4,ENCRYPTED" header."""
    try:
        with path.open("rb") as handle:
            return b"ENCRYPTED" in handle.read(4096)
    except OSError:
        return False


def _reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc)


def build_context(files: CertificateFiles) -> ssl.SSLContext:
    """A server context holding the pair, or :class:`CertificateError` naming the bad file."""
    _check_readable(files.cert_file, "DZONE_TLS_CERT_FILE")
    _check_readable(files.key_file, "DZONE_TLS_KEY_FILE")
    password = _read_password(files.password_file) if files.password_file else None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _MIN_VERSIONS[files.min_version]
    if files.ciphers:
        try:
            context.set_ciphers(files.ciphers)
        except ssl.SSLError:
            raise CertificateError(f"DZONE_TLS_CIPHERS {files.ciphers!r}: no cipher matches") from None
    try:
        # Not certificates at all (a key, an empty or truncated file) is the certificate file's fault.
        ssl.create_default_context(cafile=str(files.cert_file))
    except ssl.SSLError as exc:
        raise CertificateError(
            f"DZONE_TLS_CERT_FILE {files.cert_file}: no PEM certificate in it ({_reason(exc)})"
        ) from None
    except OSError as exc:  # replaced or removed since the first look
        raise CertificateError(f"DZONE_TLS_CERT_FILE {files.cert_file}: {exc.strerror or exc}") from None
    try:
        # Always a callback: without one OpenSSL would prompt on the terminal for an encrypted key.
        context.load_cert_chain(files.cert_file, files.key_file, password=lambda: password or b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            why = f"does not match the certificate in {files.cert_file}"
        elif password is None and _looks_encrypted(files.key_file):
            why = "is encrypted: set DZONE_TLS_KEY_PASSWORD_FILE"
        elif password is not None:
            why = f"cannot be decrypted with DZONE_TLS_KEY_PASSWORD_FILE ({_reason(exc)})"
        else:
            why = f"no usable PEM private key in it ({_reason(exc)})"
        raise CertificateError(f"DZONE_TLS_KEY_FILE {files.key_file}: {why}") from None
    except OSError as exc:
        raise CertificateError(f"DZONE_TLS_KEY_FILE {files.key_file}: {exc.strerror or exc}") from None
    return context


def _signature(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    """What changes when a file is rewritten or a certbot symlink is switched (stat follows links)."""
    result = []
    for path in paths:
        try:
            st = os.stat(path)
            result.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            result.append((0, -1, 0))
    return tuple(result)


class ReloadingContext:
    """The listening socket's context; ``check()`` loads a changed pair, ``watch()`` checks periodically."""

    def __init__(self, files: CertificateFiles) -> None:
        self.files = files
        self._seen = _signature(files.paths())
        self.current = build_context(files)
        self.context = self.current  # the one handed to the listening socket
        self.context.sni_callback = self._use_current
        self.reloads = 0
        self.failures = 0

    def _use_current(self, connection: ssl.SSLObject, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if connection.context is not self.current:
            connection.context = self.current

    def check(self) -> bool:
        """Load the files if they changed since the last look; True when a new pair is now in use."""
        seen = _signature(self.files.paths())
        if seen == self._seen:
            return False
        self._seen = seen  # a broken pair is reported once, then again only when the files change
        try:
            fresh = build_context(self.files)
        except CertificateError as exc:
            self.failures += 1
            log.error("tls_reload_failed_keeping_previous_pair", error=str(exc))
            return False
        self.current = fresh
        self.reloads += 1
        log.info("tls_pair_reloaded", cert_file=str(self.files.cert_file), reloads=self.reloads)
        return True

    async def watch(self, interval_s: float) -> None:
        """Check every ``interval_s`` until cancelled (file reads happen off the event loop)."""
        while True:
            await asyncio.sleep(interval_s)
            await asyncio.to_thread(self.check)
