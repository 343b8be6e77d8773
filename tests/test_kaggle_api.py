"""submit and kaggle-scores through the real client against the loopback mock; retries of the
calls that may be repeated; sign-in failures as one line."""
import json
import socket

import pytest
from kaggle_mock import (KEY, TOKEN, USERNAME, answer_in_turn, bounded,  # noqa: F401  (fixtures)
                         mock_kaggle, mock_kaggle_token, no_creds)

from kit import cli, paths
from kit.errors import KitError
from kit.kaggle import api

SUB = "patientId,PredictionString\nc3,0.9 10 20 30 40\n"


def test_submit_round_trip_uploads_the_file(tmp_path, mock_kaggle, capsys):
    sub = tmp_path / "sub.csv"
    sub.write_text(SUB)
    api.submit(sub, "r50 heads, flip TTA")
    assert mock_kaggle.methods() == ["StartSubmissionUpload", "CreateSubmission"]
    start = mock_kaggle.body("StartSubmissionUpload")
    assert start["competitionName"] == paths.COMPETITION and start["fileName"] == "sub.csv"
    assert int(start["contentLength"]) == len(SUB)
    assert mock_kaggle.uploads["/upload/sub"] == SUB.encode()
    create = mock_kaggle.body("CreateSubmission")
    assert create["blobFileTokens"] == "t0k"
    assert create["submissionDescription"] == "r50 heads, flip TTA"
    out = capsys.readouterr()
    assert "Successfully submitted" in out.out and KEY not in out.out + out.err


def test_submit_403_tells_to_accept_the_rules(tmp_path, mock_kaggle):
    sub = tmp_path / "sub.csv"
    sub.write_text(SUB)
    mock_kaggle.answers["StartSubmissionUpload"] = (403, {"code": 403, "message": "Forbidden"})
    with pytest.raises(KitError, match="accept the competition rules"):
        api.submit(sub, "m")
    assert "CreateSubmission" not in mock_kaggle.methods()


def test_submit_failed_upload_is_an_error(tmp_path, mock_kaggle):
    sub = tmp_path / "sub.csv"
    sub.write_text(SUB)
    mock_kaggle.put_status = 400
    with pytest.raises(KitError, match="upload to Kaggle failed"):
        api.submit(sub, "m")
    assert "CreateSubmission" not in mock_kaggle.methods()


def test_submit_server_error_is_an_error(tmp_path, mock_kaggle):
    sub = tmp_path / "sub.csv"
    sub.write_text(SUB)
    mock_kaggle.answers["CreateSubmission"] = (500, {"code": 500, "message": "boom"})
    with pytest.raises(KitError, match="HTTP 500"):
        api.submit(sub, "m")


def test_submit_missing_file_and_missing_credentials(tmp_path, no_creds):
    with pytest.raises(KitError, match="not found"):
        api.submit(tmp_path / "none.csv", "m")
    sub = tmp_path / "sub.csv"
    sub.write_text(SUB)
    with pytest.raises(KitError, match="no Kaggle credentials"):
        api.submit(sub, "m")


def test_rejected_credentials_are_one_line(tmp_path, mock_kaggle):
    sub = tmp_path / "sub.csv"
    sub.write_text(SUB)
    mock_kaggle.answers["StartSubmissionUpload"] = (401, {"code": 401, "message": "Unauthorized"})
    with pytest.raises(KitError, match="rejected the credentials") as err:
        api.submit(sub, "m")
    assert "\n" not in str(err.value)


SUBMISSIONS = {"submissions": [
    {"ref": 2, "date": "2024-03-02T10:00:00Z", "description": "second", "fileName": "b.csv",
     "status": "PENDING"},
    {"ref": 1, "date": "2024-03-01T09:30:00Z", "description": "first", "fileName": "a.csv",
     "publicScore": "0.15321", "privateScore": "0.14210", "status": "COMPLETE"}]}


def test_kaggle_scores_json_and_table(mock_kaggle, capsys):
    mock_kaggle.answers["ListSubmissions"] = (200, SUBMISSIONS)
    assert cli.main(["kaggle-scores", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["description"] for r in rows] == ["second", "first"]
    assert rows[1]["public"] == pytest.approx(0.15321) and rows[1]["private"] == pytest.approx(0.1421)
    assert rows[0]["public"] is None and rows[0]["status"] == "PENDING"
    assert rows[1]["date"].startswith("2024-03-01 09:30:00")
    assert mock_kaggle.body("ListSubmissions")["competitionName"] == paths.COMPETITION
    assert cli.main(["kaggle-scores"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["date", "description", "file", "status", "public", "private"]
    assert "0.15321" in table[2] and "0.14210" in table[2] and table[1].split()[-2:] == ["-", "-"]


def test_kaggle_scores_empty(mock_kaggle, capsys):
    assert cli.main(["kaggle-scores"]) == 0
    assert "no submissions yet" in capsys.readouterr().out


@pytest.fixture
def waits(monkeypatch):
    """The retry waits (seconds), recorded instead of slept."""
    slept = []
    monkeypatch.setattr(api, "sleep", slept.append)
    return slept


def test_a_429_is_retried_after_retry_after_and_says_so(mock_kaggle, waits, capsys):
    mock_kaggle.answers["ListSubmissions"] = answer_in_turn(
        (429, {"code": 429, "message": "Too many requests"}, {"Retry-After": "3"}),
        (200, SUBMISSIONS))
    assert cli.main(["kaggle-scores", "--json"]) == 0
    out = capsys.readouterr()
    assert [r["description"] for r in json.loads(out.out)] == ["second", "first"]
    assert out.err.splitlines() == ["kaggle: 429 from the server (listing submissions), retry 1 "
                                    "of 4 in 3 s"]
    assert waits == [3] and mock_kaggle.methods().count("ListSubmissions") == 2


def test_server_errors_back_off_then_give_up_with_one_line(mock_kaggle, waits, monkeypatch,
                                                            capsys):
    monkeypatch.setattr(api, "MAX_TRIES", 3)
    mock_kaggle.answers["GetKernelSessionStatus"] = (500, {"code": 500, "message": "boom"})
    with pytest.raises(KitError) as err:
        api.kernel_status(f"{USERNAME}/kernel")
    message = str(err.value)
    assert message.startswith(f"status of {USERNAME}/kernel: Kaggle answered HTTP 500")
    assert message.endswith("(gave up after 3 tries)") and "\n" not in message
    assert waits == [1, 2] and mock_kaggle.methods().count("GetKernelSessionStatus") == 3
    assert capsys.readouterr().err.splitlines() == [
        f"kaggle: 500 from the server (status of {USERNAME}/kernel), retry {i} of 2 in {w} s"
        for i, w in ((1, 1), (2, 2))]


def test_backoff_doubles_up_to_the_cap(mock_kaggle, waits, monkeypatch):
    monkeypatch.setattr(api, "MAX_TRIES", 8)
    mock_kaggle.answers["GetKernelSessionStatus"] = answer_in_turn(
        *[(503, {"code": 503, "message": "busy"})] * 7, (200, {"status": "RUNNING"}))
    assert api.kernel_status(f"{USERNAME}/kernel") == ("RUNNING", None)
    assert waits == [1, 2, 4, 8, 16, 30, 30]


@pytest.mark.parametrize("status", [401, 403, 404])
def test_client_errors_are_not_retried(mock_kaggle, waits, status, capsys):
    mock_kaggle.answers["GetKernelSessionStatus"] = (status, {"code": status, "message": "no"})
    with pytest.raises(KitError, match=f"^status of {USERNAME}/kernel: ") as err:
        api.kernel_status(f"{USERNAME}/kernel")
    assert "\n" not in str(err.value) and "gave up" not in str(err.value)
    assert waits == [] and mock_kaggle.methods().count("GetKernelSessionStatus") == 1
    assert capsys.readouterr().err == ""


def test_a_push_is_never_repeated(mock_kaggle, waits, tmp_path):
    mock_kaggle.answers["SaveKernel"] = (503, {"code": 503, "message": "busy"})
    (tmp_path / "kernel-metadata.json").write_text(json.dumps({
        "id": f"{USERNAME}/kernel", "title": "kernel", "code_file": "k.py",
        "language": "python", "kernel_type": "script"}))
    (tmp_path / "k.py").write_text("print(1)\n")
    with pytest.raises(KitError, match="HTTP 503"):
        api.push_kernel(tmp_path)
    assert waits == [] and mock_kaggle.methods().count("SaveKernel") == 1


def test_token_sign_in_is_retried_like_any_call(mock_kaggle_token, waits, capsys):
    mock_kaggle_token.answers["IntrospectToken"] = answer_in_turn(
        (502, {"code": 502, "message": "bad gateway"}),
        (200, {"active": True, "username": USERNAME}))
    assert cli.main(["kaggle-scores"]) == 0
    out = capsys.readouterr()
    assert "no submissions yet" in out.out and waits == [1]
    assert out.err.splitlines() == ["kaggle: 502 from the server (signing in to Kaggle "
                                    "(KAGGLE_API_TOKEN)), retry 1 of 4 in 1 s"]
    assert TOKEN not in out.out + out.err


def _network_down(monkeypatch) -> None:
    """Point the proxies at a loopback port nothing listens on: every connection is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, closed)


def test_token_sign_in_offline_is_one_line(mock_kaggle_token, waits, monkeypatch, capsys):
    _network_down(monkeypatch)
    for argv in (["kaggle-scores"], ["kernels", "status", f"{USERNAME}/kernel"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.splitlines() == ["error: signing in to Kaggle (KAGGLE_API_TOKEN): cannot reach "
                                    "Kaggle (connection refused); check the network and any "
                                    "HTTP(S)_PROXY setting, then rerun"], err
    assert waits == []                 # a refused connection is not retried


def test_legacy_key_offline_is_one_line(mock_kaggle, waits, monkeypatch, capsys):
    _network_down(monkeypatch)
    assert cli.main(["kaggle-scores"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: listing submissions: cannot reach Kaggle (connection refused); check the network "
        "and any HTTP(S)_PROXY setting, then rerun"]
    assert waits == []


def test_a_refused_token_is_one_line(mock_kaggle_token, waits, capsys):
    mock_kaggle_token.answers["IntrospectToken"] = (200, {"active": False})
    assert cli.main(["kaggle-scores"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["error: Kaggle did not accept the credentials from "
                                "KAGGLE_API_TOKEN: create a new token at "
                                "https://www.kaggle.com/settings"], err


def test_a_download_is_retried_after_a_server_error(mock_kaggle, waits, tmp_path, capsys):
    name = f"{paths.COMPETITION}.zip"
    mock_kaggle.files[name] = b"PK\x05\x06" + b"\0" * 18            # an empty zip
    mock_kaggle.answers["DownloadDataFiles"] = answer_in_turn(
        (503, {"code": 503, "message": "busy"}), (302, f"{mock_kaggle.url}/files/{name}"))
    assert api.download_competition(tmp_path) == tmp_path / name
    assert (tmp_path / name).read_bytes() == mock_kaggle.files[name] and waits == [1]
    assert f"kaggle: 503 from the server (downloading {paths.COMPETITION}), retry 1 of 4 in 1 s" \
        in capsys.readouterr().err


def test_what_is_retried():
    import requests
    import urllib3

    def http(status, **headers):
        response = requests.Response()
        response.status_code, response.headers = status, requests.structures.CaseInsensitiveDict(
            headers)
        return requests.HTTPError(f"{status}", response=response)

    reset = requests.ConnectionError(urllib3.exceptions.ProtocolError(
        "Connection aborted.", ConnectionResetError(104, "Connection reset by peer")))
    refused = requests.ConnectionError(urllib3.exceptions.MaxRetryError(
        None, "/", urllib3.exceptions.NewConnectionError(None, "Connection refused")))
    assert api.retryable(reset) == ("connection reset", None)
    assert api.retryable(requests.ReadTimeout("read timed out")) == ("timeout", None)
    assert api.retryable(requests.exceptions.ChunkedEncodingError(reset)) == ("connection reset",
                                                                               None)
    assert api.retryable(refused) is None
    assert api.retryable(http(503)) == ("503 from the server", None)
    assert api.retryable(http(429, **{"Retry-After": "7"})) == ("429 from the server", 7.0)
    what, wait = api.retryable(http(429, **{"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    assert wait == 0.0                                   # a date in the past: at once
    assert all(api.retryable(http(s)) is None for s in (400, 401, 403, 404))
    assert api.retryable(ValueError("bad argument")) is None


def test_a_full_disk_during_a_download_is_one_line(tmp_path, waits):
    import errno

    def download():
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(KitError) as err:
        api.call("downloading x", download, dest=tmp_path)
    assert str(err.value).startswith(f"{tmp_path}: downloading x: no space left on the device (")
    assert str(err.value).endswith(" free): free some space and rerun; what was downloaded is "
                                   "kept") and waits == []
    with pytest.raises(FileNotFoundError):       # any other OSError is left alone
        api.call("downloading x", lambda: open(tmp_path / "no" / "such", "rb"), dest=tmp_path)
