"""The only module that talks to Kaggle, through the official ``kaggle`` client (imported lazily).

Every call checks the credentials first (``kit.kaggle.creds``), imports the client with its
import-time chatter swallowed, and turns every error answer into one ``KitError`` line: the
client's own exit codes and return values hide some errors (a push answered HTTP 200 with
``{"error": ...}`` "succeeds"), so each answer is checked here.

Calls that are safe to repeat (sign-in, status polls, downloads, listing submissions) are retried
on answers that may pass (HTTP 429, 5xx, a connection reset, a timeout): at most ``MAX_TRIES``
tries, waiting 1, 2, 4 ... s (at most ``BACKOFF_CAP_S``, or what a Retry-After header asks, up to
``RETRY_AFTER_CAP_S``), one line on stderr each time. A push or a submission is never repeated
(Kaggle may have taken the first), nor a refused connection (no network). ``sleep`` is the
module's own so tests replace it.
"""
from __future__ import annotations

import contextlib
import email.utils
import io
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from kit import paths
from kit.errors import KitError
from kit.io import NO_SPACE, format_bytes, free_bytes, no_space_errno
from kit.kaggle.creds import require_credentials

RULES_URL = f"https://www.kaggle.com/competitions/{paths.COMPETITION}/rules"
SETTINGS_URL = "https://www.kaggle.com/settings"
MAX_TRIES = 5               # tries of a call that may be repeated (1 = no retry)
BACKOFF_S = 1.0             # the first wait; doubled after each try
BACKOFF_CAP_S = 30.0        # the longest wait of the doubling
RETRY_AFTER_CAP_S = 300.0   # the longest wait a Retry-After header gets
sleep = time.sleep          # tests replace it
T = TypeVar("T")


@dataclass(frozen=True)
class PushResult:
    """What Kaggle answered to a kernel push: ``ref`` "owner/slug", page ``url``, ``version``."""

    ref: str
    url: str
    version: int | None


def _one_line(text: object) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def _quietly(fn: Callable[[], T]) -> T:
    """``fn()`` with the client's chatter on stdout/stderr swallowed."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn()


def client() -> Any:
    """An authenticated ``kaggle.api.kaggle_api_extended.KaggleApi`` (credentials checked first).

    Signing in with an access token asks Kaggle (token introspection), so it is a network call
    like any other: retried when it may pass, one ``KitError`` line when it fails."""
    creds = require_credentials()

    def make() -> Any:
        from kaggle.api.kaggle_api_extended import KaggleApi

        return KaggleApi()

    api = _quietly(make)

    def sign_in() -> None:
        try:
            _quietly(api.authenticate)
        except SystemExit:
            raise KitError(f"Kaggle did not accept the credentials from {creds.source}: create "
                           f"a new token at {SETTINGS_URL}") from None

    call(f"signing in to Kaggle ({creds.source})", sign_in)
    return api


def username(api: Any) -> str | None:
    """The user name the client authenticated as (known after ``authenticate``)."""
    return api.config_values.get("username") or None


def _explain(action: str, status: int | None, detail: str, competition: bool) -> str:
    if status == 401:
        return f"{action}: Kaggle rejected the credentials (401); create a new token at {SETTINGS_URL}"
    if status == 403 and competition:
        return (f"{action}: Kaggle answered 403 Forbidden: accept the competition rules once in a "
                f"browser at {RULES_URL} (same account as your credentials), then rerun")
    if status == 403:
        return f"{action}: Kaggle answered 403 Forbidden ({detail}); is it yours? check --owner"
    if status == 404:
        return f"{action}: not found on Kaggle (404): {detail}"
    if status == 429:
        return f"{action}: Kaggle is rate limiting us (429); wait a minute and rerun"
    return f"{action}: Kaggle answered HTTP {status}: {detail}"


@contextlib.contextmanager
def kaggle_errors(action: str, *, competition: bool = False, tries: int = 1,
                  dest: Path | None = None) -> Iterator[None]:
    """Turn the client's exceptions into one-line ``KitError``s that say what to do (a full disk
    names the file, else ``dest``, and the free space)."""
    import requests

    after = f" (gave up after {tries} tries)" if tries > 1 else ""
    try:
        yield
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        raise KitError(_explain(action, status, _one_line(exc), competition) + after) from None
    except (requests.ConnectionError, requests.Timeout,
            requests.exceptions.ChunkedEncodingError) as exc:
        raise KitError(f"{action}: cannot reach Kaggle ({_cause(exc)}){after}; check the "
                       "network and any HTTP(S)_PROXY setting, then rerun") from None
    except ValueError as exc:    # the client's way of reporting bad arguments and access denied
        raise KitError(f"{action}: {_one_line(exc)}") from None
    except OSError as exc:       # after requests' errors (they are OSErrors too): a full disk
        code = no_space_errno(exc)
        if code is None:
            raise
        where = Path(exc.filename or dest or ".")
        raise KitError(f"{action}: {NO_SPACE[code]} ({format_bytes(free_bytes(where) or 0)} "
                       f"free): free some space and rerun; what was downloaded is kept",
                       path=where) from None


def _chain(exc: BaseException) -> Iterator[Any]:
    """``exc`` and what it wraps (args, urllib3's ``reason``, cause, context), depth first."""
    todo, seen = [exc], set()
    while todo:
        e = todo.pop()
        if id(e) in seen or len(seen) > 50:
            continue
        seen.add(id(e))
        yield e
        if isinstance(e, BaseException):
            todo += [a for a in (*e.args, getattr(e, "reason", None), e.__cause__, e.__context__)
                     if isinstance(a, BaseException)]


def _cause(exc: BaseException) -> str:
    """What went wrong under a requests error, in a few words (e.g. "connection refused")."""
    import requests
    import urllib3

    for e in _chain(exc):
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, urllib3.exceptions.NameResolutionError):
            return "name not resolved"
        if isinstance(e, (ConnectionResetError, urllib3.exceptions.ProtocolError)):
            return "connection reset"
    return "timeout" if isinstance(exc, requests.Timeout) else type(exc).__name__


def retryable(exc: BaseException) -> tuple[str, float | None] | None:
    """(what happened, Retry-After seconds or None) when another try may pass, else None:
    HTTP 429 and 5xx, a reset connection, a timeout; not a refused connection or a name that
    does not resolve (no network: trying again at once does not help)."""
    import requests
    import urllib3

    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status == 429 or (status is not None and 500 <= status <= 599):
            return f"{status} from the server", _retry_after(exc.response)
        return None
    if isinstance(exc, requests.Timeout):
        return "timeout", None
    if isinstance(exc, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        no_network = (ConnectionRefusedError, urllib3.exceptions.NewConnectionError)
        if any(isinstance(e, no_network) for e in _chain(exc)):
            return None
        return _cause(exc), None
    return None


def _retry_after(response: Any) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) in seconds from now; None without one."""
    value = (getattr(response, "headers", None) or {}).get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def call(action: str, fn: Callable[[], T], *, competition: bool = False,
         retry: bool = True, dest: Path | None = None) -> T:
    """``fn()`` with the client's errors turned into one KitError line (see kaggle_errors);
    retried (see the module) when ``retry`` and the error may pass."""
    tries = MAX_TRIES if retry else 1
    for attempt in range(1, tries + 1):
        try:
            return fn()
        except Exception as exc:
            reason = retryable(exc)
            if reason is None or attempt == tries:
                with kaggle_errors(action, competition=competition,
                                   tries=attempt if reason else 1, dest=dest):
                    raise
                raise
            what, asked = reason
            wait = min(BACKOFF_CAP_S, BACKOFF_S * 2 ** (attempt - 1))
            if asked is not None:
                wait = min(RETRY_AFTER_CAP_S, max(wait, asked))
            print(f"kaggle: {what} ({action}), retry {attempt} of {tries - 1} in {wait:g} s",
                  file=sys.stderr, flush=True)
            sleep(wait)
    raise AssertionError("unreachable")


def submit(path: Path, message: str) -> None:
    """Send a submission CSV to the competition (raises ``KitError`` on any error answer)."""
    path = Path(path)
    if not path.is_file():
        raise KitError("submission file not found", path=path)
    api = client()
    resp = call(f"submitting {path}", lambda: api.competition_submit(
        str(path), message, paths.COMPETITION, quiet=True), competition=True, retry=False)
    if resp is None or resp.message == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
        raise KitError(f"submitting {path}: the upload to Kaggle failed; rerun to retry")
    print(f"submitted {path} to {paths.COMPETITION}"
          f"{': ' + _one_line(resp.message) if resp.message else ''}; "
          "scores: python -m kit kaggle-scores")


def download_competition(dest: Path) -> Path:
    """Download the competition zip into ``dest`` (client resumes a partial file); its path."""
    api = client()
    Path(dest).mkdir(parents=True, exist_ok=True)
    call(f"downloading {paths.COMPETITION}", lambda: api.competition_download_files(
        paths.COMPETITION, path=str(dest), quiet=False), competition=True, dest=Path(dest))
    zips = sorted(Path(dest).glob("*.zip"))
    if not zips:
        raise KitError(f"Kaggle sent no zip for {paths.COMPETITION}", path=dest)
    return zips[0]


def push_kernel(folder: Path) -> PushResult:
    """Push a built kernel folder (kernel-metadata.json + its code_file); refuse error answers."""
    api = client()
    resp = call(f"pushing {folder}", lambda: api.kernels_push(str(folder)), retry=False)
    if resp is None:
        raise KitError(f"pushing {folder}: Kaggle sent no answer; rerun")
    if resp.error:
        raise KitError(f"pushing {folder}: Kaggle refused the push: {_one_line(resp.error)}")
    dropped = {name: getattr(resp, f"invalid_{name}") for name in
               ("tags", "dataset_sources", "competition_sources", "kernel_sources", "model_sources")}
    dropped = {k: v for k, v in dropped.items() if v}
    if dropped:
        raise KitError(f"pushing {folder}: Kaggle saved the kernel but dropped invalid {dropped}; "
                       "fix kernel-metadata.json (or --dataset) and push again")
    return PushResult(ref=resp.ref, url=resp.url, version=resp.version_number)


def kernel_status(ref: str) -> tuple[str, str | None]:
    """(status name such as QUEUED / RUNNING / COMPLETE / ERROR, failure message) of a kernel."""
    api = client()
    resp = call(f"status of {ref}", lambda: api.kernels_status(ref))
    status = getattr(resp.status, "name", str(resp.status))
    return status, (_one_line(resp.failure_message) if resp.failure_message else None)


def kernel_output(ref: str, dest: Path, pattern: str | None = None) -> list[Path]:
    """Download a kernel's output files (and its log) into ``dest``; the paths written."""
    api = client()
    files, _ = call(f"output of {ref}", lambda: api.kernels_output(
        ref, str(dest), file_pattern=pattern, force=True, quiet=False), dest=Path(dest))
    return [Path(f) for f in files]


def list_submissions() -> list[Any]:
    """Our submissions to the competition (newest first), as the client's ApiSubmission objects."""
    api = client()
    return call("listing submissions", lambda: list(
        api.competition_submissions(paths.COMPETITION, page_size=100) or []), competition=True)
