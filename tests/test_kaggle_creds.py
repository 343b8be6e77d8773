"""Credentials: found like the client finds them, never leaked, one clear error when absent."""
import json
import os
import subprocess
import sys

import pytest
from kaggle_mock import KEY, no_creds  # noqa: F401  (fixture)

from kit.errors import KitError
from kit.kaggle import creds


def _kaggle_json(folder, username="alice", key="k" * 32):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kaggle.json").write_text(json.dumps({"username": username, "key": key}))


def test_none_found_names_both_ways_to_fix(no_creds):
    assert creds.find_credentials() is None
    with pytest.raises(KitError) as err:
        creds.require_credentials()
    message = str(err.value)
    assert "KAGGLE_API_TOKEN" in message and "kaggle.json" in message and "\n" not in message


def test_kaggle_json_in_home_then_env_overrides(no_creds, monkeypatch):
    _kaggle_json(no_creds / ".kaggle")
    found = creds.find_credentials()
    assert (found.method, found.username) == ("legacy-key", "alice")
    assert found.source.endswith(".kaggle/kaggle.json")
    monkeypatch.setenv("KAGGLE_USERNAME", "bob")
    assert creds.find_credentials().username == "bob"


def test_config_dir_rules(no_creds, monkeypatch, tmp_path):
    _kaggle_json(no_creds / ".config" / "kaggle", username="xdg")
    assert creds.find_credentials().username == "xdg"          # ~/.kaggle absent -> ~/.config
    _kaggle_json(tmp_path / "cfg", username="custom")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    assert creds.find_credentials().username == "custom"


def test_env_pair_and_token_order(no_creds, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "carol")
    assert creds.find_credentials() is None                   # a user name alone is not enough
    monkeypatch.setenv("KAGGLE_KEY", "s" * 32)
    assert creds.find_credentials().method == "legacy-key"
    (no_creds / ".kaggle").mkdir()
    (no_creds / ".kaggle" / "access_token").write_text("tok-" + "t" * 30 + "\n")
    found = creds.find_credentials()
    assert found.method == "token" and found.source.endswith("access_token")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "envtoken-" + "x" * 20)
    assert creds.find_credentials().source == "KAGGLE_API_TOKEN"
    assert set(creds.secret_values()) == {"envtoken-" + "x" * 20, "s" * 32}


def test_credentials_object_holds_no_secret(no_creds, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "dave")
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    found = creds.find_credentials()
    assert KEY not in repr(found)


def test_malformed_kaggle_json_is_one_line_error(no_creds):
    (no_creds / ".kaggle").mkdir()
    (no_creds / ".kaggle" / "kaggle.json").write_text("{not json")
    with pytest.raises(KitError, match="kaggle.json.*not valid JSON"):
        creds.find_credentials()


@pytest.mark.parametrize("argv", [["kaggle-scores"], ["kernels", "status", "full", "--owner", "x"],
                                  ["data", "--out", "d/rsna", "--download-dir", "d"]])
def test_cli_without_credentials_fails_cleanly_without_importing_kaggle(tmp_path, argv):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(home), PYTHONPATH=os.getcwd(), XDG_CONFIG_HOME=str(home / ".config"))
    code = ("import sys; from kit import cli; rc = cli.main(sys.argv[1:]); "
            "assert 'kaggle' not in sys.modules, 'kaggle client imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no Kaggle credentials")
    assert proc.stdout == ""
    assert not (home / ".config" / "kaggle").exists() and not (home / ".kaggle").exists()
    assert not (tmp_path / "d").exists()
