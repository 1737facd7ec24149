"""Credentials and what must never be shown.

Secrets come from the environment or from a file the config names, never from the YAML,
so a config file can be committed, printed and logged. Two credentials exist:

- gateway write tokens (`/feedback`, and any route that changes what the model learns):
  `$FTOPS_GATEWAY_TOKENS` as `name=token,name2=token2` (a bare token is named `default`),
  or a file (`security.tokens_file` / `$FTOPS_GATEWAY_TOKENS_FILE`) with one `name token`
  per line. The name is what the prediction log records as the label's sender.
- the Prefect server's auth string (`user:password`): `$FTOPS_PREFECT_AUTH` or
  `security.prefect_auth_file`; ftops gives it to the server it starts
  (PREFECT_SERVER_API_AUTH_STRING) and to every client (PREFECT_API_AUTH_STRING).

Without any token the gateway's writes are open; that is allowed only on loopback.
"""

from __future__ import annotations

import hmac
import json
import ipaddress
import os
import re
from pathlib import Path
from typing import Any

from ftops.config import Config
from ftops.errors import ConfigError

ENV_TOKENS = "FTOPS_GATEWAY_TOKENS"
ENV_TOKENS_FILE = "FTOPS_GATEWAY_TOKENS_FILE"
ENV_PREFECT_AUTH = "FTOPS_PREFECT_AUTH"
ANONYMOUS = "anonymous"  # the sender of a label when the gateway runs open (no tokens)
MASK = "***"
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/@:\s]*:)(?P<secret>[^@/\s]+)(?P<tail>@)", re.I)


def _parse_tokens(lines: list[str], origin: str) -> dict[str, str]:
    tokens: dict[str, str] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.replace("=", " ", 1).partition(" ")
        name, token = (name, token.strip()) if sep else ("default", name)
        if not _NAME.match(name) or len(token) < 16 or any(c.isspace() for c in token):
            raise ConfigError(f"{origin}, entry {number}: expected 'name token' with a name of letters, digits or "
                              "'_.@-' and a token of at least 16 characters without spaces.")
        if token in tokens:
            raise ConfigError(f"{origin}, entry {number}: the same token is given to two names.")
        tokens[token] = name
    return tokens


def gateway_tokens(config: Config, env: dict[str, str] | None = None) -> dict[str, str]:
    """token -> sender name; empty when no credential is configured (open gateway)."""
    env = os.environ if env is None else env
    if env.get(ENV_TOKENS):
        return _parse_tokens(env[ENV_TOKENS].split(","), f"${ENV_TOKENS}")
    path = env.get(ENV_TOKENS_FILE) or config.security.tokens_file
    if not path:
        return {}
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"Cannot read the gateway tokens file {path} (security.tokens_file or "
                          f"${ENV_TOKENS_FILE}): {exc.strerror}.") from None
    tokens = _parse_tokens(text.splitlines(), str(path))
    if not tokens:
        raise ConfigError(f"The gateway tokens file {path} holds no token: add one 'name token' line.")
    return tokens


def sender(tokens: dict[str, str], authorization: str | None) -> str | None:
    """The sender a `Authorization: Bearer <token>` header names, or None when it names none.
    Every token is compared in constant time, so timing does not tell which one was close."""
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    offered = authorization[7:].strip().encode()
    found = None
    for token, name in tokens.items():
        if hmac.compare_digest(offered, token.encode()):
            found = name
    return found


def prefect_auth(config: Config, env: dict[str, str] | None = None) -> str | None:
    """The Prefect auth string (`user:password`), or None when Prefect runs open."""
    env = os.environ if env is None else env
    if env.get(ENV_PREFECT_AUTH):
        return env[ENV_PREFECT_AUTH].strip()
    path = config.security.prefect_auth_file
    if not path:
        return None
    try:
        value = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"Cannot read the Prefect auth file {path} (security.prefect_auth_file): "
                          f"{exc.strerror}.") from None
    if ":" not in value:
        raise ConfigError(f"The Prefect auth file {path} must hold 'user:password'.")
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def mask_url(value: str) -> str:
    """`postgresql://user:secret@host/db` -> `postgresql://user:***@host/db`."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['tail']}", value)


def masked(data: Any) -> Any:
    """A config dump (or any JSON-able value) with every password inside a URL masked."""
    if isinstance(data, dict):
        return {k: masked(v) for k, v in data.items()}
    if isinstance(data, list):
        return [masked(v) for v in data]
    if isinstance(data, str):
        return mask_url(data)
    return data


ENV_SECRETS = "FTOPS_CONFIG_SECRETS"


def _leaves(data: Any, path: tuple = ()):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _leaves(value, (*path, i))
    else:
        yield path, data


def seal(config: Config) -> tuple[str, dict[str, str]]:
    """A config for a file beside a child process (JSON, passwords masked) and the
    environment that carries the real values to that child: files get copied, logged and
    attached to bug reports; a process environment does not."""
    dump = config.model_dump(mode="json")
    secrets = {json.dumps(path): value for path, value in _leaves(dump)
               if isinstance(value, str) and mask_url(value) != value}
    env = {ENV_SECRETS: json.dumps(secrets)} if secrets else {}
    return json.dumps(masked(dump), indent=2), env


def unseal(text: str, env: dict[str, str] | None = None) -> Config:
    """The inverse of seal(), in the child."""
    env = os.environ if env is None else env
    data = json.loads(text)
    for path, value in json.loads(env.get(ENV_SECRETS) or "{}").items():
        *parents, last = json.loads(path)
        node = data
        for key in parents:
            node = node[key]
        node[last] = value
    return Config.model_validate(data)
