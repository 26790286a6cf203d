"""shared/redaction.py as pure logic: every written form of a secret goes, viewers' tokens stay bounded."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from shared.redaction import REPLACEMENT, Secrets

PASSWORD = "p@ss/w%rd:'x\"y é"


def test_every_written_form_of_a_secret_is_replaced() -> None:
    secrets = Secrets()
    secrets.add(PASSWORD)
    for written in (
        PASSWORD,
        repr(PASSWORD),
        json.dumps(PASSWORD),
        json.dumps(PASSWORD, ensure_ascii=False),
        json.dumps(repr(PASSWORD)),  # a repr inside a JSON log line
        quote(PASSWORD, safe=""),
        f"postgresql://u:{quote(PASSWORD, safe='')}@h/d",
    ):
        line = f"before {written} after"
        assert secrets.redact(line).count(REPLACEMENT) == 1, (written, secrets.redact(line))
        assert "before " in secrets.redact(line) and " after" in secrets.redact(line)


def test_a_url_password_is_known_decoded_and_encoded() -> None:
    secrets = Secrets()
    secrets.add_url_password(f"postgresql://u:{quote(PASSWORD, safe='')}@h:5432/d")
    assert PASSWORD not in secrets.redact(f"password={PASSWORD!r}")
    secrets.add_url_password("postgresql://[not-a-url")  # not a URL at all: the whole value is hidden
    assert secrets.redact("x postgresql://[not-a-url y") == f"x {REPLACEMENT} y"


def test_short_values_and_empty_ones_are_not_secrets() -> None:
    secrets = Secrets()
    for value in (None, "", "abc"):
        secrets.add(value)
    assert secrets.redact("abc and a b c") == "abc and a b c"


def test_colours_cannot_split_a_secret() -> None:
    secrets = Secrets()
    secrets.add("split-secret")
    assert "split" not in secrets.redact("x \x1b[1msplit-\x1b[0msecret y")


def test_viewer_tokens_are_found_at_word_edges_and_kept_bounded() -> None:
    secrets = Secrets(transient_max=3)
    tokens = [f"viewerToken{i:04d}abcdef" for i in range(5)]
    with pytest.raises(ValueError):
        secrets.add_transient("has spaces in it")  # the serve refuses such a token before this
    for token in tokens:
        secrets.add_transient(token)
    line = " ".join(f"({token})." for token in tokens) + f" -{tokens[4]}-"
    redacted = secrets.redact(line)
    assert tokens[0] in redacted and tokens[1] in redacted  # forgotten: only the newest 3 are held
    assert all(token not in redacted for token in tokens[2:]), redacted
