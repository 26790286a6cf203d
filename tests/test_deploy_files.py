"""deploy/certbot-deploy-hook.sh, run as certbot runs it: the renewed pair lands where the container's
user (uid 10001) can read it, key 0600, and a second renewal replaces both files."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.certs import LocalCA

HOOK = Path(__file__).resolve().parent.parent / "deploy" / "certbot-deploy-hook.sh"
CONTAINER_UID = 10001  # the Dockerfile's `useradd --uid`


def _run_hook(lineage: Path, target: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RENEWED_LINEAGE": str(lineage), "DZONE_TLS_DIR": str(target)}
    return subprocess.run(["sh", str(HOOK)], env=env, capture_output=True, text=True, timeout=30)


def test_the_deploy_hook_hands_the_pair_to_the_container_user(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("certbot runs its hooks as root; so must this test (CI does)")
    assert f"--uid {CONTAINER_UID}" in (HOOK.parent.parent / "Dockerfile").read_text()
    lineage = tmp_path / "live" / "dzone.example.org"
    lineage.mkdir(parents=True)
    target = tmp_path / "dzone-tls"
    for round_ in range(2):  # the first install, then a renewal
        pair = LocalCA(tmp_path / f"ca{round_}").issue()
        (lineage / "fullchain.pem").write_bytes(pair.cert_file.read_bytes())
        (lineage / "privkey.pem").write_bytes(pair.key_file.read_bytes())
        os.chmod(lineage / "privkey.pem", 0o600)
        done = _run_hook(lineage, target)
        assert done.returncode == 0, done.stderr
        for name in ("fullchain.pem", "privkey.pem"):
            copied = target / name
            info = copied.stat()
            assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (CONTAINER_UID, 0o600), name
            assert copied.read_bytes() == (lineage / name).read_bytes(), name
        directory = target.stat()
        assert directory.st_uid == CONTAINER_UID and directory.st_mode & stat.S_IXUSR
        assert not list(target.glob(".*.new"))  # nothing half-written left behind
    missing = subprocess.run(
        ["sh", str(HOOK)], capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"]}
    )
    assert missing.returncode != 0 and "RENEWED_LINEAGE" in missing.stderr
