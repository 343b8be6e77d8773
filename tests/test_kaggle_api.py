"""submit and kaggle-scores through the real client against the loopback mock."""
import json
from pathlib import Path

import pytest
from kaggle_mock import KEY, bounded, mock_kaggle, no_creds  # noqa: F401  (fixtures)

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
