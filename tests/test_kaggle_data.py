"""Safe unzip and the `data` command (download through the real client against the loopback mock)."""
import io
import stat
import zipfile
from pathlib import Path

import pytest
from kaggle_mock import bounded, mock_kaggle, no_creds  # noqa: F401  (fixtures)

from kit import cli, paths
from kit.errors import KitError
from kit.kaggle import unzip

LABELS = ("patientId,x,y,width,height,Target\n"
          "a1,,,,,0\n"
          "b2,264.0,152.0,213.0,379.0,1\n"
          "b2,562.0,152.0,256.0,453.0,1\n")
CLASSES = "patientId,class\na1,Normal\nb2,Lung Opacity\nb2,Lung Opacity\n"


def make_zip(members: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            if name in symlinks:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, data)
    return buf.getvalue()


def competition_zip() -> bytes:
    return make_zip({paths.TRAIN_LABELS: LABELS.encode(), paths.CLASS_INFO: CLASSES.encode(),
                     f"{paths.TRAIN_IMAGES}/a1.dcm": b"x" * 1000,
                     f"{paths.TRAIN_IMAGES}/b2.dcm": b"y" * 1000,
                     f"{paths.TEST_IMAGES}/c3.dcm": b"z" * 1000})


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


@pytest.mark.parametrize("evil", ["../evil.txt", "a/../../evil.txt", "/tmp/evil-abs.txt",
                                  "C:/evil.txt", "..\\evil.txt"])
def test_zip_slip_members_are_refused_and_nothing_is_written(tmp_path, evil):
    zpath = tmp_path / "z" / "bad.zip"
    zpath.parent.mkdir()
    zpath.write_bytes(make_zip({"ok.txt": b"fine", evil: b"pwned"}))
    before = files_under(tmp_path)
    with pytest.raises(KitError, match="refusing member"):
        unzip.safe_unzip(zpath, tmp_path / "out" / "rsna")
    assert files_under(tmp_path) == before
    assert not Path("/tmp/evil-abs.txt").exists()


def test_symlink_member_is_refused(tmp_path):
    zpath = tmp_path / "link.zip"
    zpath.write_bytes(make_zip({"link": b"/etc/passwd"}, symlinks=("link",)))
    with pytest.raises(KitError, match="symbolic link"):
        unzip.safe_unzip(zpath, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_zip_is_detected(tmp_path, keep):
    data = competition_zip()
    zpath = tmp_path / "cut.zip"
    zpath.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(KitError, match="not a complete zip|truncated"):
        unzip.verify_zip(zpath)
    with pytest.raises(KitError):
        unzip.safe_unzip(zpath, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.unzip-tmp").exists()


def test_corrupt_member_fails_crc_and_leaves_no_target(tmp_path):
    data = bytearray(make_zip({"a.bin": bytes(range(256)) * 64}))
    offset = data.index(b"a.bin") + len("a.bin") + 40      # inside the deflated data
    data[offset] ^= 0xFF
    zpath = tmp_path / "crc.zip"
    zpath.write_bytes(bytes(data))
    with pytest.raises(KitError, match="unpacking failed"):
        unzip.safe_unzip(zpath, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.unzip-tmp").exists()


def test_unzip_into_place_and_refuse_non_empty_target(tmp_path):
    zpath = tmp_path / "c.zip"
    zpath.write_bytes(competition_zip())
    assert unzip.safe_unzip(zpath, tmp_path / "rsna", progress=False) == 5
    assert (tmp_path / "rsna" / paths.TRAIN_LABELS).read_text() == LABELS
    assert (tmp_path / "rsna" / paths.TRAIN_IMAGES / "b2.dcm").read_bytes() == b"y" * 1000
    with pytest.raises(KitError, match="not empty"):
        unzip.safe_unzip(zpath, tmp_path / "rsna")


def test_low_disk_is_refused_before_writing(tmp_path, monkeypatch):
    zpath = tmp_path / "c.zip"
    zpath.write_bytes(competition_zip())
    monkeypatch.setattr(unzip.shutil, "disk_usage",
                        lambda p: type("U", (), {"free": 10 * 1024 ** 2})())
    with pytest.raises(KitError, match="needs .* GB free"):
        unzip.safe_unzip(zpath, tmp_path / "rsna")
    assert not (tmp_path / "rsna").exists() and not (tmp_path / ".rsna.unzip-tmp").exists()


def test_data_command_with_local_zip_prints_label_summary(in_tmp, capsys):
    Path("c.zip").write_bytes(competition_zip())
    assert cli.main(["data", "--zip", "c.zip", "--out", "data/rsna"]) == 0
    out = capsys.readouterr().out
    assert "positive_images  1" in out and "boxes            2" in out
    assert Path("c.zip").exists()                      # a zip given by the user is kept
    assert cli.main(["data", "--zip", "c.zip", "--out", "data/rsna"]) == 0   # rerun: no-op
    assert "already holds the data" in capsys.readouterr().out


def test_data_command_downloads_via_mock_then_unzips(in_tmp, mock_kaggle, capsys):
    mock_kaggle.files[f"{paths.COMPETITION}.zip"] = competition_zip()
    assert cli.main(["data"]) == 0
    assert mock_kaggle.methods() == ["DownloadDataFiles"]
    assert mock_kaggle.body("DownloadDataFiles") == {"competitionName": paths.COMPETITION}
    assert (in_tmp / paths.RSNA_DIR / paths.TRAIN_LABELS).read_text() == LABELS
    assert not (in_tmp / "data" / f"{paths.COMPETITION}.zip").exists()        # deleted after unzip
    assert not (in_tmp / "data" / f"{paths.COMPETITION}.zip.part").exists()
    assert "images           2" in capsys.readouterr().out


def test_data_command_truncated_download_is_not_kept_as_complete(in_tmp, mock_kaggle):
    mock_kaggle.files[f"{paths.COMPETITION}.zip"] = competition_zip()[:-40]
    assert cli.main(["data"]) == 2
    assert not (in_tmp / "data" / f"{paths.COMPETITION}.zip").exists()   # never renamed
    assert not (in_tmp / paths.RSNA_DIR).exists()
    assert not list((in_tmp / "data").rglob("*.zip"))                    # bad bytes deleted
    mock_kaggle.files[f"{paths.COMPETITION}.zip"] = competition_zip()
    assert cli.main(["data"]) == 0                                       # rerun recovers
    assert (in_tmp / paths.RSNA_DIR / paths.TRAIN_LABELS).is_file()


def test_data_command_403_says_accept_the_rules(in_tmp, mock_kaggle, capsys):
    mock_kaggle.answers["DownloadDataFiles"] = (403, {"code": 403, "message": "Forbidden"})
    assert cli.main(["data"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "accept the competition rules" in err
    assert "/rules" in err
