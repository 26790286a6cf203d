"""The one place that knows the process's secrets, and takes them out of every line the process writes.

Settings register the bot token and the database password as they are loaded (:func:`shared.settings.load`),
the serve each viewer's OAuth token as it checks it; :mod:`shared.logs` passes every rendered line,
exception and traceback through :func:`redact`, so a secret never reaches a log whatever code printed it.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from urllib.parse import quote, quote_plus, unquote, urlsplit

REPLACEMENT = "[redacted]"
# Shorter values would blank out ordinary words (a 3-character password protects nothing anyway).
MIN_SECRET_CHARS = 4
# Viewers' OAuth tokens are held while they may still be in flight, newest last; older ones are forgotten.
TRANSIENT_MAX = 10_000
# What a viewer's token looks like (Discord's are base64url with dots): the serve refuses any other shape
# before calling Discord, so scanning a line for such runs finds every transient secret in it.
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_.~-]{8,512}")
# The environment variables that hold secrets: the bot token (the simulator's too), libpq's password, and
# the URLs that may carry one.
SECRET_VARIABLES = ("DISCORD_BOT_TOKEN", "DZONE_SIM_BOT_TOKEN", "PGPASSWORD")
URL_VARIABLES = ("DATABASE_URL",)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _written_forms(secret: str) -> set[str]:
    """How a secret can appear in a line: as is, inside a repr, in JSON (both escapes), percent-encoded."""
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}
    forms |= {repr(secret)[1:-1], repr(secret + '"')[1:-2], repr(secret + "'")[1:-2]}
    for form in list(forms):  # a repr inside a JSON log line is escaped twice
        forms |= {json.dumps(form)[1:-1], json.dumps(form, ensure_ascii=False)[1:-1]}
    return {form for form in forms if len(form) >= MIN_SECRET_CHARS}


class Secrets:
    """The secrets of one process: a few long-lived ones (tokens, passwords) and viewers' short-lived tokens."""

    def __init__(self, transient_max: int = TRANSIENT_MAX) -> None:
        self._lock = threading.Lock()  # logging may render from any thread
        self._kept: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._transient: OrderedDict[str, None] = OrderedDict()
        self._transient_max = transient_max

    def add(self, secret: str | None) -> None:
        """Never write ``secret`` again (nor its repr, JSON or URL forms)."""
        if not secret or len(secret) < MIN_SECRET_CHARS or secret in self._kept:
            return
        with self._lock:
            self._kept.add(secret)
            forms = set().union(*(_written_forms(s) for s in self._kept))
            # Longest first, so that a form containing another is replaced whole.
            self._pattern = re.compile("|".join(map(re.escape, sorted(forms, key=len, reverse=True))))

    def add_url_password(self, url: str | None) -> None:
        """The password inside a libpq URL, if any."""
        if url:
            try:
                password = urlsplit(url).password
            except ValueError:  # not even a URL: the whole value is what must not be shown
                self.add(url)
                return
            if password:  # libpq (and asyncpg) percent-decode it: the decoded one is the secret
                self.add(unquote(password))
                self.add(password)

    def add_environment(self, environ: Mapping[str, str] = os.environ) -> None:
        """The secrets among the process's environment variables (before any of them is validated)."""
        for name in SECRET_VARIABLES:
            self.add(environ.get(name, "").strip())
        for name in URL_VARIABLES:
            self.add_url_password(environ.get(name))

    def add_transient(self, token: str) -> None:
        """A viewer's token (of :data:`TOKEN_SHAPE`), kept among the newest :data:`TRANSIENT_MAX`."""
        if TOKEN_SHAPE.fullmatch(token) is None:
            raise ValueError("a transient secret must have the token shape (the serve checks it first)")
        with self._lock:
            self._transient[token] = None
            self._transient.move_to_end(token)
            while len(self._transient) > self._transient_max:
                self._transient.popitem(last=False)

    def redact(self, text: str) -> str:
        """``text`` with every known secret replaced by :data:`REPLACEMENT`."""
        clean = self._replace(text)
        if "\x1b[" in clean:  # colours may split a secret: if the plain text still holds one, drop them
            plain = _ANSI.sub("", clean)
            replaced = self._replace(plain)
            if replaced != plain:
                return replaced
        return clean

    def _replace(self, text: str) -> str:
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(REPLACEMENT, text)
        transient = self._transient
        if transient and any(
            run in transient or run.strip("._~-") in transient for run in TOKEN_SHAPE.findall(text)
        ):  # the common line holds none: one scan, no rewrite
            text = TOKEN_SHAPE.sub(self._transient_run, text)
        return text

    def _transient_run(self, match: re.Match[str]) -> str:
        run = match.group()
        if run in self._transient:
            return REPLACEMENT
        # A token at the end of a sentence, or between dashes: the run's edges are punctuation.
        core = run.strip("._~-")
        return run.replace(core, REPLACEMENT) if core in self._transient else run

    def clear(self) -> None:
        """Forget every secret (tests)."""
        with self._lock:
            self._kept.clear()
            self._pattern = None
            self._transient.clear()


SECRETS = Secrets()
add = SECRETS.add
add_url_password = SECRETS.add_url_password
add_environment = SECRETS.add_environment
add_transient = SECRETS.add_transient
redact = SECRETS.redact
