"""Find Kaggle credentials the way the ``kaggle`` client does, without importing it.

Only *where* the credentials are and the user name are kept; the secret values are read to
check that they exist and are returned only by ``secret_values`` (to prove that a built kernel
script does not contain them). Nothing here prints, logs or writes a secret.

Order (as the client tries): an access token (``KAGGLE_API_TOKEN``: the token or a file path;
``~/.kaggle/access_token``), then a legacy key (``KAGGLE_USERNAME`` + ``KAGGLE_KEY``, each
overriding ``kaggle.json`` in ``$KAGGLE_CONFIG_DIR``, else ``~/.kaggle``, else
``~/.config/kaggle``), then the OAuth file of ``kaggle auth login`` (``~/.kaggle/credentials.json``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from kit.errors import KitError

HOW_TO_FIX = (
    "no Kaggle credentials found. Either set KAGGLE_API_TOKEN to a token from "
    "https://www.kaggle.com/settings (API -> Create New Token), or save the legacy kaggle.json "
    "from the same page as ~/.kaggle/kaggle.json (chmod 600) or set KAGGLE_USERNAME and KAGGLE_KEY"
)


@dataclass(frozen=True)
class Credentials:
    """Where the credentials were found (never the secret itself).

    method: "token" | "legacy-key" | "oauth"; source: an env variable name or a file path;
    username: the Kaggle user name when known without asking the server (not for tokens).
    """

    method: str
    source: str
    username: str | None


def _home(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("HOME") or Path.home())


def config_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The folder the client reads kaggle.json from (same rule as kaggle 2.x)."""
    if environ.get("KAGGLE_CONFIG_DIR"):
        return Path(environ["KAGGLE_CONFIG_DIR"])
    legacy = _home(environ) / ".kaggle"
    if legacy.exists():
        return legacy
    xdg = environ.get("XDG_CONFIG_HOME") or str(_home(environ) / ".config")
    return Path(xdg) / "kaggle"


def _read_token_file(path: Path) -> str | None:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return token or None


def _read_kaggle_json(path: Path) -> dict[str, str]:
    """username/key from kaggle.json; a malformed file is an error naming the file."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError) as exc:
        raise KitError(f"not valid JSON ({type(exc).__name__}); download a new kaggle.json "
                       "from https://www.kaggle.com/settings", path=path) from None
    if not isinstance(data, dict):
        raise KitError("expected a JSON object with username and key", path=path)
    return {k: str(data[k]) for k in ("username", "key") if data.get(k)}


def _token(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(token, source) for an access token, or None."""
    value = environ.get("KAGGLE_API_TOKEN")
    if value:
        if Path(value).exists():
            token = _read_token_file(Path(value))
            return (token, "KAGGLE_API_TOKEN (file)") if token else None
        return value, "KAGGLE_API_TOKEN"
    for name in ("access_token", "access_token.txt"):
        path = _home(environ) / ".kaggle" / name
        token = _read_token_file(path)
        if token:
            return token, str(path)
    return None


def _legacy(environ: Mapping[str, str]) -> tuple[dict[str, str], str] | None:
    """({username, key}, source) for a legacy API key, or None."""
    path = config_dir(environ) / "kaggle.json"
    values = _read_kaggle_json(path)
    sources = [str(path)] if values else []
    for field in ("username", "key"):
        env = f"KAGGLE_{field.upper()}"
        if environ.get(env):
            values[field] = environ[env]
            sources.append(env)
    if values.get("username") and values.get("key"):
        return values, " + ".join(sources)
    return None


def find_credentials(environ: Mapping[str, str] = os.environ) -> Credentials | None:
    """The credentials the client will use, or None when there are none."""
    token = _token(environ)
    if token:
        return Credentials("token", token[1], environ.get("KAGGLE_USERNAME") or None)
    legacy = _legacy(environ)
    if legacy:
        return Credentials("legacy-key", legacy[1], legacy[0]["username"])
    oauth = _home(environ) / ".kaggle" / "credentials.json"
    if oauth.is_file():
        try:
            username = json.loads(oauth.read_text(encoding="utf-8")).get("username")
        except (OSError, ValueError, AttributeError):
            username = None
        return Credentials("oauth", str(oauth), username or None)
    return None


def require_credentials(environ: Mapping[str, str] = os.environ) -> Credentials:
    """The credentials, or a KitError naming both ways to provide them."""
    creds = find_credentials(environ)
    if creds is None:
        raise KitError(HOW_TO_FIX)
    return creds


def secret_values(environ: Mapping[str, str] = os.environ) -> list[str]:
    """Every secret string a credential source holds (for leak checks; never print them)."""
    secrets = []
    token = _token(environ)
    if token:
        secrets.append(token[0])
    legacy = _legacy(environ)
    if legacy:
        secrets.append(legacy[0]["key"])
    oauth = _home(environ) / ".kaggle" / "credentials.json"
    if oauth.is_file():
        try:
            data = json.loads(oauth.read_text(encoding="utf-8"))
            secrets += [str(v) for k, v in data.items() if "token" in k and v]
        except (OSError, ValueError, AttributeError):
            pass
    return [s for s in secrets if len(s) >= 8]
