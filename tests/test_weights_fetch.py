"""``weights`` (kit.data.weights) against a loopback HTTP server serving a small fake weight file:
download, resume after a cut, checksums refused, --from checked, and train / submission failing
up front (one line, nothing created) when the file is missing or damaged. Never the real files."""
from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest

from kit import cli
from kit.config import get_preset
from kit.data import weights as WD
from kit.errors import KitError

CONTENT = bytes(range(256)) * 40          # 10,240 bytes of "weights"


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET serves server.content (Range: bytes=N- gets a 206, unless server.ranges is False:
    then the whole file, 200); server.cut_at: the first answer stops after that many bytes of the
    file, with the full Content-Length promised."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        server = self.server
        seen = self.headers.get("Range")
        server.seen.append(seen)
        rng = seen if server.ranges else None
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if start >= len(server.content):
            self.send_response(416)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = server.content[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range",
                             f"bytes {start}-{len(server.content) - 1}/{len(server.content)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut_at is not None:
            self.wfile.write(body[:server.cut_at - start])
            server.cut_at = None
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(content, cut_at=None, ranges=True) -> (url of /fake.h5, the Range headers seen)."""
    servers = []

    def start(content: bytes = CONTENT, cut_at: int | None = None, ranges: bool = True):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.content, server.cut_at, server.seen, server.ranges = content, cut_at, [], ranges
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/fake.h5", server.seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _fake(digest: str | None, size: int | None = len(CONTENT), also=()) -> WD.WeightFile:
    return WD.WeightFile("coco", "mask_rcnn_coco.h5", "http://127.0.0.1:9/unused", size, digest,
                         "a fake COCO file", also=also)


@pytest.fixture(autouse=True)
def hermetic(tmp_path, monkeypatch):
    """No /kaggle of this machine, no proxy for the loopback server, no mirror variables, and a
    cwd of its own (data/weights lands in tmp_path/work)."""
    monkeypatch.setattr(WD, "KAGGLE_INPUT", tmp_path / "kaggle-input")
    monkeypatch.setattr(WD, "KAGGLE_WORKING", tmp_path / "kaggle-working")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for name in WD.KNOWN:
        monkeypatch.delenv(WD.URL_ENV + name.upper().replace("-", "_"), raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def fake_coco(monkeypatch):
    """The table's coco entry is the fake file, with its SHA-256."""
    monkeypatch.setitem(WD.KNOWN, "coco", _fake("sha256:" + hashlib.sha256(CONTENT).hexdigest()))
    return WD.KNOWN["coco"]


def _err_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_download_checks_the_file_and_renames_it_into_place(serve, fake_coco, hermetic, capsys):
    url, seen = serve()
    assert cli.main(["weights", "coco", "--url", url]) == 0
    dest = hermetic / "data" / "weights" / "mask_rcnn_coco.h5"
    assert dest.read_bytes() == CONTENT and _leftovers(dest.parent) == ["mask_rcnn_coco.h5"]
    out = capsys.readouterr().out
    assert f"downloading {url} -> data/weights/mask_rcnn_coco.h5" in out
    assert (f"weights coco: data/weights/mask_rcnn_coco.h5 (10,240 bytes, sha256 "
            f"{hashlib.sha256(CONTENT).hexdigest()}: the published file)") in out
    assert cli.main(["weights", "coco", "--url", url]) == 0      # a checked copy: no request
    assert "is already there" in capsys.readouterr().out and seen == [None]


def test_the_url_can_come_from_the_environment(serve, fake_coco, hermetic, monkeypatch):
    url, seen = serve()
    monkeypatch.setenv("KIT_WEIGHTS_URL_COCO", url)
    assert WD.url_for("coco") == url
    assert WD.url_for("imagenet-r50") == WD.KNOWN["imagenet-r50"].url
    assert cli.main(["weights", "coco"]) == 0 and seen == [None]
    assert (hermetic / "data/weights/mask_rcnn_coco.h5").read_bytes() == CONTENT


def test_a_cut_download_resumes_with_a_range_request(serve, fake_coco, hermetic, capsys):
    url, seen = serve(cut_at=3000)
    assert cli.main(["weights", "coco", "--url", url]) == 2
    [line] = _err_lines(capsys)
    assert "download cut at 3,000 of 10,240 bytes" in line
    assert "run `python -m kit weights coco` again to resume" in line
    folder = hermetic / "data" / "weights"
    assert _leftovers(folder) == ["mask_rcnn_coco.h5.part"]
    assert (folder / "mask_rcnn_coco.h5.part").stat().st_size == 3000
    assert cli.main(["weights", "coco", "--url", url]) == 0
    assert seen == [None, "bytes=3000-"]
    assert "resuming at 3,000 of 10,240 bytes" in capsys.readouterr().out
    assert (folder / "mask_rcnn_coco.h5").read_bytes() == CONTENT
    assert _leftovers(folder) == ["mask_rcnn_coco.h5"]


def test_a_server_ignoring_range_restarts_from_zero(serve, fake_coco, hermetic):
    url, seen = serve(ranges=False)
    folder = hermetic / "data" / "weights"
    folder.mkdir(parents=True)
    (folder / "mask_rcnn_coco.h5.part").write_bytes(b"junk" * 10)
    assert cli.main(["weights", "coco", "--url", url]) == 0
    assert seen == ["bytes=40-"] and (folder / "mask_rcnn_coco.h5").read_bytes() == CONTENT


def test_a_wrong_checksum_is_refused_and_nothing_is_kept(serve, hermetic, monkeypatch, capsys):
    other = hashlib.md5(b"the published file").hexdigest()
    monkeypatch.setitem(WD.KNOWN, "coco", _fake(f"md5:{other}"))
    url, _ = serve()
    assert cli.main(["weights", "coco", "--url", url]) == 2
    [line] = _err_lines(capsys)
    assert f"md5 {hashlib.md5(CONTENT).hexdigest()}, expected {other}" in line
    assert "not the published mask_rcnn_coco.h5, download deleted" in line
    assert _leftovers(hermetic / "data" / "weights") == []
    monkeypatch.setitem(WD.KNOWN, "coco", _fake(None, size=len(CONTENT) - 1))
    assert cli.main(["weights", "coco", "--url", url]) == 2       # longer than published
    assert "size 10,240 bytes, expected 10,239" in _err_lines(capsys)[0]
    assert _leftovers(hermetic / "data" / "weights") == []


def test_an_unreachable_server_is_one_line(fake_coco, hermetic, capsys):
    with socket.socket() as sock:            # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert cli.main(["weights", "coco", "--url", f"http://127.0.0.1:{port}/x.h5"]) == 2
    [line] = _err_lines(capsys)
    assert "download failed" in line and "--from FILE" in line
    assert _leftovers(hermetic / "data" / "weights") == []


def test_from_a_local_file_is_checked_the_same_way(fake_coco, hermetic, tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(CONTENT[:-1] + b"x")
    assert cli.main(["weights", "coco", "--from", str(bad)]) == 2
    [line] = _err_lines(capsys)
    assert line.startswith(f"error: {bad}: sha256 ") and "nothing copied" in line
    assert not (hermetic / "data").exists()
    assert cli.main(["weights", "coco", "--from", str(tmp_path / "absent.h5")]) == 2
    assert "no such file (--from)" in _err_lines(capsys)[0]
    good = tmp_path / "good.h5"
    good.write_bytes(CONTENT)
    assert cli.main(["weights", "coco", "--from", str(good)]) == 0
    assert "weights coco: data/weights/mask_rcnn_coco.h5 (10,240 bytes, sha256" in \
        capsys.readouterr().out
    assert (hermetic / "data/weights/mask_rcnn_coco.h5").read_bytes() == CONTENT


def test_size_only_when_no_checksum_is_known_says_so(hermetic, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(WD.KNOWN, "coco", _fake(None))
    src = tmp_path / "any.h5"
    src.write_bytes(CONTENT)
    assert cli.main(["weights", "coco", "--from", str(src)]) == 0
    assert "note: no published checksum is known, only the size was checked" in \
        capsys.readouterr().out


def test_another_published_copy_is_accepted_under_the_same_name(tmp_path):
    wf = _fake("md5:" + "0" * 32, size=5,
               also=((len(CONTENT), "md5:" + hashlib.md5(CONTENT).hexdigest()),))
    path = tmp_path / "w.h5"
    path.write_bytes(CONTENT)
    assert WD.problem_with(path, wf) is None
    path.write_bytes(b"1234")
    assert WD.problem_with(path, wf) == "size 4 bytes, expected 5 or 10,240"


def test_the_table_knows_the_public_files():
    coco = WD.KNOWN["coco"]
    assert coco.file == "mask_rcnn_coco.h5" and coco.size == 257_557_808
    assert coco.url.endswith("/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5")
    for wf in WD.KNOWN.values():
        algorithm, value = wf.digest.split(":")
        assert len(value) == {"md5": 32, "sha256": 64}[algorithm]
        assert wf.url.rsplit("/", 1)[1] == wf.file


# -------------------------------------------------------------- the up-front check of commands
@pytest.mark.parametrize("command", ["train", "submission"])
def test_a_missing_file_fails_before_anything_exists(command, hermetic, tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    argv = [command, "--preset", "tiny", "--set", "init=coco", "--runs-dir", str(runs)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: init=coco needs mask_rcnn_coco.h5")
    assert "`python -m kit weights coco`" in err[0] and "--weights FILE" in err[0]
    assert list(runs.iterdir()) == [] and list(hermetic.iterdir()) == []   # no run, cache, data


def test_a_damaged_file_fails_before_anything_exists(hermetic, tmp_path, capsys):
    folder = hermetic / "data" / "weights"
    folder.mkdir(parents=True)
    (folder / "mask_rcnn_coco.h5").write_bytes(b"truncated")
    runs = tmp_path / "runs"
    runs.mkdir()
    assert cli.main(["train", "--preset", "tiny", "--set", "init=coco", "--runs-dir",
                     str(runs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: init=coco needs mask_rcnn_coco.h5; data/weights/mask_rcnn_coco.h5 is "
                   "damaged (size 9 bytes, expected 257,557,808): fetch it again with "
                   "`python -m kit weights coco`, or pass --weights FILE"]
    assert list(runs.iterdir()) == [] and _leftovers(hermetic) == ["data"]


def test_init_weights_path_names_the_file_each_init_needs(hermetic, tmp_path, fake_coco):
    tiny = get_preset("tiny")
    assert WD.init_weights_path(tiny) is None                               # init=none
    r101 = get_preset("tiny", ["init=imagenet", "backbone=resnet101"])
    with pytest.raises(KitError, match=r"init=imagenet needs resnet101_weights_tf_dim_ordering"
                                       r"_tf_kernels_notop.h5.*`python -m kit weights "
                                       r"imagenet-r101`"):
        WD.init_weights_path(r101)
    with pytest.raises(KitError, match=r"absent.h5: no such weights file \(--weights\)"):
        WD.init_weights_path(get_preset("tiny", ["init=coco"]), tmp_path / "absent.h5")
    own = tmp_path / "own.h5"
    own.write_bytes(b"anything")             # a file the user names is not checked against KNOWN
    assert WD.init_weights_path(get_preset("tiny", ["init=coco"]), own) == own
    assert WD.init_weights_path(get_preset("tiny", [f"init={own}"])) == own
    with pytest.raises(KitError, match="init=.*absent.h5: no such weights file"):
        WD.init_weights_path(get_preset("tiny", [f"init={tmp_path / 'absent.h5'}"]))
    attached = WD.KAGGLE_INPUT / "coco-weights" / "mask_rcnn_coco.h5"     # a Kaggle dataset
    attached.parent.mkdir(parents=True)
    attached.write_bytes(CONTENT)
    assert WD.init_weights_path(get_preset("tiny", ["init=coco"])) == attached


def test_a_kaggle_session_fetches_a_missing_file(serve, fake_coco, hermetic, monkeypatch):
    url, seen = serve()
    monkeypatch.setenv("KIT_WEIGHTS_URL_COCO", url)
    WD.KAGGLE_WORKING.mkdir()                 # as in a Kaggle session
    path = WD.init_weights_path(get_preset("tiny", ["init=coco"]))
    assert path == Path("data/weights/mask_rcnn_coco.h5") and path.read_bytes() == CONTENT
    assert WD.init_weights_path(get_preset("tiny", ["init=coco"])) == path and seen == [None]


def test_a_full_disk_during_a_download_is_one_line(serve, fake_coco, tmp_path, monkeypatch):
    """ENOSPC while writing the .part: one KitError naming the file and the free space."""
    import builtins
    import errno

    real_open = builtins.open

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.fh, name)

    def fake_open(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        return Full(fh) if str(path).endswith(".part") and mode in ("ab", "wb") else fh

    url, _ = serve()
    monkeypatch.setattr(builtins, "open", fake_open)
    with pytest.raises(KitError) as err:
        WD.download(fake_coco, url, tmp_path / "w" / "mask_rcnn_coco.h5", progress=False)
    line = str(err.value)
    assert "\n" not in line and "no space left on the device" in line and "free" in line
    assert "mask_rcnn_coco.h5.part" in line
    assert not (tmp_path / "w" / "mask_rcnn_coco.h5").exists()
