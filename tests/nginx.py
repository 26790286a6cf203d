"""The reverse-proxy recipe (deploy/nginx-dzone.conf) run by Debian's nginx in a temporary prefix.

The recipe is rendered by replacing its real-world lines (ports, certificate paths, upstream) one for one;
a line that is no longer in the file fails the test, so the recipe and the test cannot drift apart.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.certs import ServerPair
from tests.serve_process import free_port, http_status

RECIPE = Path(__file__).resolve().parent.parent / "deploy" / "nginx-dzone.conf"
# The upstream of the recipe: every host port of compose's DZONE_SERVE_PORTS default, 3000-3009.
RECIPE_UPSTREAMS = "".join(f"    server 127.0.0.1:{port} max_fails=0;\n" for port in range(3000, 3010))


def render_recipe(https_port: int, http_port: int, upstream_ports: list[int], pair: ServerPair) -> str:
    text = RECIPE.read_text()
    upstreams = "".join(f"    server 127.0.0.1:{port} max_fails=0;\n" for port in upstream_ports)
    swaps = {
        "    listen 443 ssl;\n": f"    listen 127.0.0.1:{https_port} ssl;\n",
        "    listen 80;\n": f"    listen 127.0.0.1:{http_port};\n",
        RECIPE_UPSTREAMS: upstreams,
        "/etc/letsencrypt/live/dzone.example.org/fullchain.pem;": f"{pair.cert_file};",
        "/etc/letsencrypt/live/dzone.example.org/privkey.pem;": f"{pair.key_file};",
    }
    for old, new in swaps.items():
        assert text.count(old) == 1, (
            f"{RECIPE.name} no longer has {old.strip()!r} once: update tests/nginx.py"
        )
        text = text.replace(old, new)
    return text


def _main_config(prefix: Path) -> str:
    """What Debian's /etc/nginx/nginx.conf provides around a site file, with every path in ``prefix``."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the temporary prefix
    temp = "".join(
        f"    {kind}_temp_path {prefix / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\npid {prefix / 'nginx.pid'};\n"
        "events { worker_connections 256; }\n"
        f"http {{\n    access_log {prefix / 'access.log'};\n{temp}"
        f"    include {prefix / 'dzone.conf'};\n}}\n"
    )


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    https_port: int
    http_port: int
    prefix: Path

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def nginx_in_front(
    upstream_ports: list[int], pair: ServerPair, prefix: Path, ca_context: ssl.SSLContext
) -> Iterator[Nginx]:
    """nginx (foreground, by PID) serving the recipe on a free loopback port, ready when it answers."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        reason = "Debian package nginx is not installed (see .ci/apt-packages.txt)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    prefix.mkdir(parents=True, exist_ok=True)
    https_port, http_port = free_port(), free_port()
    (prefix / "dzone.conf").write_text(render_recipe(https_port, http_port, upstream_ports, pair))
    (prefix / "nginx.conf").write_text(_main_config(prefix))
    command = [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, f"nginx -t rejected the recipe:\n{checked.stderr}"
    process = subprocess.Popen([*command, "-g", "daemon off;"], stderr=subprocess.DEVNULL)
    proxy = Nginx(process, https_port, http_port, prefix)
    try:
        deadline = time.monotonic() + 20
        while http_status(f"{proxy.base}/healthz", ca_context) != 200:
            assert process.poll() is None, f"nginx exited: {proxy.error_log()}"
            assert time.monotonic() < deadline, f"nginx not answering: {proxy.error_log()}"
            time.sleep(0.05)  # polling a child process for readiness
        yield proxy
    finally:
        process.terminate()  # SIGTERM to the master by PID: fast shutdown, workers exit with it
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
