"""A loopback stand-in for the Kaggle API, for driving the REAL ``kaggle`` client offline.

The client is pointed at it with KAGGLE_API_ENVIRONMENT=LOCALHOST (calls go to
http://localhost/api/v1/<Service>/<Method>) and HTTP(S)_PROXY=http://127.0.0.1:<port>, so the
server sees absolute-form request lines. It listens on 127.0.0.1 only and answers CONNECT
(tunnels to anything real) with 403, so nothing can leave the machine.

``KaggleMock.answers[method]`` is (status, JSON body[, headers]) or a callable(request) -> that
(``answer_in_turn`` gives one answer per call);
``KaggleMock.calls`` records every API call as (method, JSON body, headers); ``files`` maps a
path under /files/ to bytes served by GET; ``uploads`` collects PUT bodies (answered
``put_status``).
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

USERNAME = "kitmockuser"
KEY = "0123456789abcdef0123456789abcdef"   # fake legacy key; tests check it never leaks


@dataclass
class Call:
    method: str
    body: dict
    headers: dict


@dataclass
class KaggleMock:
    answers: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    other: list[str] = field(default_factory=list)    # CONNECTs and unknown paths (refused)
    put_status: int = 200                             # answer to uploads (PUT)

    def __post_init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.answers = {**self.default_answers(), **self.answers}
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def default_answers(self) -> dict[str, Any]:
        return {
            "SaveKernel": (200, {"ref": f"/code/{USERNAME}/kernel", "url": "http://localhost/k",
                                 "versionNumber": 3}),
            "GetKernelSessionStatus": (200, {"status": "COMPLETE"}),
            "ListKernelSessionOutput": (200, {"files": [], "log": "[]"}),
            "StartSubmissionUpload": (200, {"createUrl": f"{self.url}/upload/sub", "token": "t0k"}),
            "CreateSubmission": (200, {"message": "Successfully submitted", "ref": 7}),
            "ListSubmissions": (200, {"submissions": []}),
            "DownloadDataFiles": (302, f"{self.url}/files/rsna-pneumonia-detection-challenge.zip"),
        }

    def methods(self) -> list[str]:
        return [c.method for c in self.calls]

    def body(self, method: str) -> dict:
        """The JSON body of the last call of ``method``."""
        return [c.body for c in self.calls if c.method == method][-1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def env(self, home: Path) -> dict[str, str]:
        """Environment that points the real client here with a fake legacy key in ``home``."""
        kaggle_dir = home / ".kaggle"
        kaggle_dir.mkdir(parents=True, exist_ok=True)
        cred = kaggle_dir / "kaggle.json"
        cred.write_text(json.dumps({"username": USERNAME, "key": KEY}))
        os.chmod(cred, 0o600)
        proxy = self.url
        return {"KAGGLE_API_ENVIRONMENT": "LOCALHOST", "HOME": str(home),
                "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy,
                "https_proxy": proxy, "NO_PROXY": "", "no_proxy": "",
                "KAGGLE_USERNAME": USERNAME, "KAGGLE_KEY": KEY}


def answer_in_turn(*answers: tuple) -> Callable[[dict], tuple]:
    """An answer that is ``answers[0]`` on the first call, ``answers[1]`` on the next, ... (the
    last one from then on): e.g. 429 then 200."""
    calls = []

    def answer(body: dict) -> tuple:
        calls.append(body)
        return answers[min(len(calls), len(answers)) - 1]

    return answer


def _handler(mock: KaggleMock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:   # keep test output clean
            pass

        def _send(self, status: int, body: bytes = b"", ctype: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def do_CONNECT(self) -> None:
            mock.other.append(f"CONNECT {self.path}")
            self._send(403, b"loopback mock: no tunnels")

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            if not path.startswith("/api/v1/"):
                mock.other.append(f"POST {self.path}")
                return self._send(404, b"{}")
            method = path.rsplit("/", 1)[-1]
            raw = self._body()
            body = json.loads(raw) if raw else {}
            mock.calls.append(Call(method, body, dict(self.headers)))
            answer = mock.answers.get(method, (404, {"code": 404, "message": f"no {method}"}))
            if callable(answer):
                answer = answer(body)
            status, payload, *extra = answer
            if status in (301, 302, 303, 307):
                return self._send(status, b"", headers={"Location": payload})
            self._send(status, json.dumps(payload).encode(), headers=extra[0] if extra else None)

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            name = path[len("/files/"):] if path.startswith("/files/") else None
            if name is None or name not in mock.files:
                mock.other.append(f"GET {self.path}")
                return self._send(404, b"not found", "text/plain")
            self._send(200, mock.files[name], "application/octet-stream")

        def do_PUT(self) -> None:
            mock.uploads[urlsplit(self.path).path] = self._body()
            self._send(mock.put_status, b"{}")

    return Handler


# ---- pytest helpers (imported by the tests/test_kaggle_*.py files) ------------------------------
import signal  # noqa: E402

import pytest  # noqa: E402

TEST_SECONDS = 60   # every Kaggle test is cut off after this long


@pytest.fixture
def bounded():
    """Fail the test (instead of hanging) after TEST_SECONDS."""
    def _expired(signum, frame):
        raise TimeoutError(f"test ran past {TEST_SECONDS} s")

    old = signal.signal(signal.SIGALRM, _expired)
    signal.alarm(TEST_SECONDS)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def no_creds(tmp_path, monkeypatch):
    """An environment with no Kaggle credentials anywhere (HOME is an empty temp folder)."""
    home = tmp_path / "empty-home"
    home.mkdir()
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR",
                "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def mock_kaggle(tmp_path, monkeypatch, no_creds, bounded):
    """The loopback mock, with the environment pointing the real client at it."""
    mock = KaggleMock()
    for var, value in mock.env(tmp_path / "home").items():
        monkeypatch.setenv(var, value)
    yield mock
    mock.close()
    assert not [o for o in mock.other if o.startswith("CONNECT")], "a tunnel was attempted"


TOKEN = "kat_" + "t" * 28    # fake access token


@pytest.fixture
def mock_kaggle_token(mock_kaggle, monkeypatch):
    """The loopback mock, signed in with an access token only (KAGGLE_API_TOKEN; no kaggle.json,
    no KAGGLE_USERNAME/KEY): the client asks Kaggle about the token first (IntrospectToken).
    The client is imported before (importing it signs in once, which would take an answer)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
    folder = Path(os.environ["HOME"]) / ".kaggle"
    (folder / "kaggle.json").unlink()
    # the client fixes where kaggle.json is when first imported (an earlier test's HOME)
    monkeypatch.setattr(KaggleApi, "config_dir", str(folder))
    monkeypatch.setattr(KaggleApi, "config", str(folder / "kaggle.json"))
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    mock_kaggle.answers.setdefault("IntrospectToken",
                                   (200, {"active": True, "username": USERNAME}))
    return mock_kaggle
