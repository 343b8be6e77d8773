"""The only module that talks to Kaggle, through the official ``kaggle`` client (imported lazily).

Every call checks the credentials first (``kit.kaggle.creds``), imports the client with its
import-time chatter swallowed, and turns every error answer into one ``KitError`` line: the
client's own exit codes and return values hide some errors (a push answered HTTP 200 with
``{"error": ...}`` "succeeds"), so each answer is checked here.
"""
from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from kit import paths
from kit.errors import KitError
from kit.kaggle.creds import require_credentials

RULES_URL = f"https://www.kaggle.com/competitions/{paths.COMPETITION}/rules"
SETTINGS_URL = "https://www.kaggle.com/settings"


@dataclass(frozen=True)
class PushResult:
    """What Kaggle answered to a kernel push: ``ref`` "owner/slug", page ``url``, ``version``."""

    ref: str
    url: str
    version: int | None


def _one_line(text: object) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def client() -> Any:
    """An authenticated ``kaggle.api.kaggle_api_extended.KaggleApi`` (credentials checked first)."""
    creds = require_credentials()
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        try:
            api.authenticate()
        except SystemExit:
            raise KitError(f"Kaggle did not accept the credentials from {creds.source}: create a "
                           f"new token at {SETTINGS_URL}") from None
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
def kaggle_errors(action: str, *, competition: bool = False) -> Iterator[None]:
    """Turn the client's exceptions into one-line ``KitError``s that say what to do."""
    import requests

    try:
        yield
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        raise KitError(_explain(action, status, _one_line(exc), competition)) from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise KitError(f"{action}: cannot reach Kaggle ({type(exc).__name__}); check the network "
                       "and any HTTP(S)_PROXY setting, then rerun") from None
    except ValueError as exc:    # the client's way of reporting bad arguments and access denied
        raise KitError(f"{action}: {_one_line(exc)}") from None


def submit(path: Path, message: str) -> None:
    """Send a submission CSV to the competition (raises ``KitError`` on any error answer)."""
    path = Path(path)
    if not path.is_file():
        raise KitError("submission file not found", path=path)
    api = client()
    with kaggle_errors(f"submitting {path}", competition=True):
        resp = api.competition_submit(str(path), message, paths.COMPETITION, quiet=True)
    if resp is None or resp.message == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
        raise KitError(f"submitting {path}: the upload to Kaggle failed; rerun to retry")
    print(f"submitted {path} to {paths.COMPETITION}"
          f"{': ' + _one_line(resp.message) if resp.message else ''}; "
          "scores: python -m kit kaggle-scores")


def download_competition(dest: Path) -> Path:
    """Download the competition zip into ``dest`` (client resumes a partial file); its path."""
    api = client()
    Path(dest).mkdir(parents=True, exist_ok=True)
    with kaggle_errors(f"downloading {paths.COMPETITION}", competition=True):
        api.competition_download_files(paths.COMPETITION, path=str(dest), quiet=False)
    zips = sorted(Path(dest).glob("*.zip"))
    if not zips:
        raise KitError(f"Kaggle sent no zip for {paths.COMPETITION}", path=dest)
    return zips[0]


def push_kernel(folder: Path) -> PushResult:
    """Push a built kernel folder (kernel-metadata.json + its code_file); refuse error answers."""
    api = client()
    with kaggle_errors(f"pushing {folder}"):
        resp = api.kernels_push(str(folder))
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
    with kaggle_errors(f"status of {ref}"):
        resp = api.kernels_status(ref)
    status = getattr(resp.status, "name", str(resp.status))
    return status, (_one_line(resp.failure_message) if resp.failure_message else None)


def kernel_output(ref: str, dest: Path, pattern: str | None = None) -> list[Path]:
    """Download a kernel's output files (and its log) into ``dest``; the paths written."""
    api = client()
    with kaggle_errors(f"output of {ref}"):
        files, _ = api.kernels_output(ref, str(dest), file_pattern=pattern, force=True, quiet=False)
    return [Path(f) for f in files]


def list_submissions() -> list[Any]:
    """Our submissions to the competition (newest first), as the client's ApiSubmission objects."""
    api = client()
    with kaggle_errors("listing submissions", competition=True):
        return list(api.competition_submissions(paths.COMPETITION, page_size=100) or [])
