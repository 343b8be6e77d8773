"""The live page's server (kit.view), in process: figures equal kit.score's, refusals, save.

The run folders are made by hand (demo DICOMs, raw tables drawn around the ground truth): no
training, no TensorFlow. ``make_run`` is shared with tests/test_view_browser.py.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kit import cli, paths
from kit.config import RunConfig, get_preset
from kit.data.demo import make_dataset
from kit.data.labels import boxes_by_patient, read_labels, read_sample_submission
from kit.data.prepare import default_cache_dir, prepare
from kit.io import write_csv
from kit.score.metric import prf_table, score_dataset
from kit.score.postprocess import PostProcess
from kit.view import server as view_server
from kit.view.films import Films, image_counts
from kit.view.server import ViewApp, make_server
from kit.view.view import exposure_warning, is_local

REPO = Path(__file__).resolve().parent.parent
TUNED = PostProcess(score_threshold=0.3, image_threshold=0.0, box_scale=1.0, max_boxes=3)


def _bench_view():
    """bench/view.py as a module (its fake raw tables and its latency measurement)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_view", REPO / "bench" / "view.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_raw(ids, gt: dict | None, rng: np.random.Generator) -> pd.DataFrame:
    """Raw detections drawn around the ground truth (bench/view.py's), rounded like predict's."""
    raw = _bench_view().fake_raw(ids, gt, rng)
    return raw.round({"score": 4, "x": 1, "y": 1, "w": 1, "h": 1})


def make_run(root: Path, n_train: int = 16, n_test: int = 4, size: int = 64, seed: int = 0,
             cache: bool = False) -> Path:
    """A run folder made by hand under ``root``/runs over demo data in ``root``/data/demo:
    config.json, val_ids.csv (every train image), raw_val.csv + raw_val_images.csv,
    raw_test.csv, postprocess.json (TUNED); ``cache``: the images prepared (else DICOM)."""
    data = root / "data" / "demo"
    make_dataset(data, n_train, n_test, size=size, seed=seed)
    gt = boxes_by_patient(read_labels(data / paths.TRAIN_LABELS))
    ids, run = list(gt), root / "runs" / "tiny-20250101-000000"
    run.mkdir(parents=True)
    RunConfig(name="tiny", image_size=size, data_dir=str(data)).save(run / "config.json")
    write_csv(run / "val_ids.csv", pd.DataFrame({"patientId": ids}))
    rng = np.random.default_rng(seed)
    write_csv(run / "raw_val.csv", fake_raw(ids, gt, rng))
    p = [float(np.clip(0.6 * (len(gt[i]) > 0) + rng.uniform(0, 0.4), 0, 1)) for i in ids]
    write_csv(run / "raw_val_images.csv", pd.DataFrame({"patientId": ids, "p_opacity": p}).round(4))
    test_ids = read_sample_submission(data / paths.SAMPLE_SUBMISSION)["patientId"].tolist()
    write_csv(run / "raw_test.csv", fake_raw(test_ids, None, rng))
    TUNED.to_json(run / "postprocess.json")
    if cache:
        prepare(data, size, out=default_cache_dir(data, size), workers=1)
    return run


class Served:
    """A ViewApp on a free loopback port, served from a thread; ``request`` sends raw HTTP."""

    def __init__(self, run: Path, films: Films | None = None):
        self.run = run
        self.app = ViewApp(run, films or Films.from_run(run))
        self.server = make_server(self.app, "127.0.0.1", 0)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, obj: object = None) -> tuple[int, dict]:
        body = None if obj is None else json.dumps(obj).encode()
        status, data = self.request(method, path, body, {"Content-Type": "application/json"})
        return status, json.loads(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def served(in_tmp):
    s = Served(make_run(in_tmp, cache=True))
    yield s
    s.close()


def kit_figures(run: Path, post: PostProcess) -> tuple[dict, dict, dict]:
    """(gt, kept predictions, prf) straight from the run's files through kit.score."""
    from kit.runs import image_scores_beside, read_raw
    from kit.report.report import val_ground_truth

    _, ids, gt = val_ground_truth(run)
    kept = post.apply(read_raw(run / "raw_val.csv"), image_scores_beside(run / "raw_val.csv"))
    return gt, kept, prf_table(gt, kept)


SETTINGS = [TUNED, replace(TUNED, score_threshold=0.6), replace(TUNED, max_boxes=1),
            replace(TUNED, box_scale=0.85, nms_iou=0.3), replace(TUNED, image_threshold=0.7),
            replace(TUNED, opacity_threshold=0.5, score_threshold=0.05, max_boxes=10)]


@pytest.mark.parametrize("post", SETTINGS, ids=lambda p: str(asdict(p)))
def test_figures_equal_what_kit_score_gives(served, post):
    status, out = served.json("POST", "/api/figures", asdict(post))
    assert status == 200, out
    gt, kept, prf = kit_figures(served.run, post)
    score = score_dataset(gt, kept)
    fig = out["figures"]
    assert fig["map"] == pytest.approx(score.map, abs=1e-6)
    assert fig["tuned_map"] == pytest.approx(
        score_dataset(*kit_figures(served.run, TUNED)[:2]).map, abs=1e-6)
    assert [r["iou"] for r in fig["prf"]] == [0.25, 0.5, 0.75]
    for row in fig["prf"]:
        want = prf[row["iou"]]
        assert {k: row[k] for k in ("tp", "fp", "fn")} == {k: want[k] for k in ("tp", "fp", "fn")}
        for k in ("precision", "recall", "f1"):
            assert row[k] == pytest.approx(want[k], abs=1e-6)
    ids = served.app.films.ids
    assert out["val"]["score"] == [None if score.per_image[p] is None
                                   else pytest.approx(score.per_image[p], abs=1e-4) for p in ids]
    # per image, at IoU 0.5: false boxes and missed boxes are prf_table's fp and fn of that image
    per = {p: prf_table({p: gt[p]}, {p: kept[p]} if p in kept else {}, (0.5,))[0.5] for p in ids}
    assert (out["val"]["false"], out["val"]["missed"]) == ([per[p]["fp"] for p in ids],
                                                           [per[p]["fn"] for p in ids])
    assert fig["images_with_false_box"] == sum(per[p]["fp"] > 0 for p in ids)
    assert fig["negatives_with_box"] == sum(len(gt[p]) == 0 and p in kept for p in ids)
    shown = {p: np.array(rows)[:, 0] for p, rows in out["boxes"]["val"].items()}
    assert set(shown) == set(kept)
    for p in kept:
        np.testing.assert_allclose(shown[p], kept[p][0], atol=1e-4)
    assert out["changed"] == [{"field": k, "tuned": v, "now": asdict(post)[k]}
                              for k, v in asdict(TUNED).items() if asdict(post)[k] != v]
    if post.opacity_threshold > 0:    # the test films have no image scores to gate on
        assert "test" not in out["boxes"] and "test boxes not shown" in out["notes"][0]
    else:
        assert "test" in out["boxes"] and not out["notes"]


def test_the_latency_benchmark_answers_every_setting(capsys):
    """bench/view.py (timings live there, not in a test) on a small set: every setting answered."""
    bench = _bench_view()
    found = bench.measure(bench.films(n_val=60, n_test=30), repeat=1)
    assert set(found) == {"tuned", "threshold 0.05, 10 boxes", "tuned + test films' boxes",
                          "first move to NMS IoU 0.3"}
    assert all(v["best_ms"] > 0 and v["metric_ms"] >= 0 for v in found.values())


def test_image_counts_sum_to_prf_table():
    gt = {"a": np.array([[0.0, 0, 100, 100]]), "b": np.zeros((0, 4)), "c": np.array([[500.0, 500, 50, 50]])}
    preds = {"a": (np.array([0.9, 0.5]), np.array([[0.0, 0, 100, 100], [300.0, 300, 50, 50]])),
             "b": (np.array([0.4]), np.array([[0.0, 0, 10, 10]]))}
    kept, false, missed = image_counts(gt, preds, list(gt))
    assert kept.tolist() == [2, 1, 0] and false.tolist() == [1, 1, 0] and missed.tolist() == [0, 0, 1]


def test_page_state_images_and_run_files(served):
    status, page = served.request("GET", "/")
    assert status == 200 and b"<canvas" in page
    assert b"http://" not in page and b"https://" not in page     # self-contained: no CDN
    status, state = served.json("GET", "/api/state")
    assert status == 200 and state["run"] == served.run.name
    assert state["tuned"] == asdict(TUNED) == state["saved"] and state["has_image_scores"]
    films = state["films"]
    assert [f["split"] for f in films] == ["val"] * 16 + ["test"] * 4
    assert "prepared cache" in state["image_source"] and not state["model_loaded"]
    for path in (f"/image/val/{films[0]['id']}.png", f"/image/test/{films[-1]['id']}.png"):
        status, png = served.request("GET", path)
        assert status == 200 and png.startswith(b"\x89PNG")
    status, raw = served.json("GET", f"/api/raw/val/{films[0]['id']}")
    assert status == 200 and all(len(r) == 5 for r in raw)
    status, body = served.request("GET", "/run/config.json")
    assert status == 200 and json.loads(body)["name"] == "tiny"
    assert "raw_val.csv" in state["files"] and "config.json" in state["files"]


@pytest.mark.parametrize("path,status", [(p, 403) for p in (
    "/run/../config.json", "/run/..%2Fconfig.json", "/run/%2e%2e/%2e%2e/etc/passwd",
    "/run/..%2f..%2f..%2fetc%2fpasswd", "/run/val_ids.csv/")] + [(p, 404) for p in (
    "/image/val/..%2F..%2Fconfig.json.png", "/image/val/../../config.json.png", "/image/nope/x.png",
    "/image/val/x.png", "/run/.postprocess.json.tmp", "/etc/passwd", "/api/raw/val/..%2F..%2Fetc",
    "/run/missing.png", "/%2e%2e/%2e%2e/etc/passwd", "/run/best.h5")])
def test_traversal_and_unknown_paths_are_refused(served, path, status):
    got, body = served.request("GET", path)
    assert got == status and json.loads(body)["error"] and b"root:" not in body
    assert served.request("GET", "/api/state")[0] == 200      # still serving


def test_bad_requests_get_a_status_and_a_message(served, monkeypatch):
    good = asdict(TUNED)
    for body, words in [("not json", "not JSON"), ({**good, "score_threshold": 2}, "score_threshold"),
                        ({**good, "max_boxes": 1.5}, "max_boxes"), ({**good, "colour": 1}, "unknown"),
                        ({**good, "box_scale": "big"}, "must be a number"), ([1, 2], "JSON object"),
                        ({"score_threshold": 0.5}, "missing")]:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        got, answer = served.request("POST", "/api/figures", data)
        assert got == 400 and words in json.loads(answer)["error"], (body, answer)
    assert served.request("PUT", "/api/figures", b"{}")[0] == 405
    assert served.request("POST", "/api/nothing", b"{}")[0] == 404
    assert served.request("POST", "/api/figures", b"x" * (view_server.MAX_JSON + 1))[0] == 413
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    conn.putrequest("POST", "/api/figures")
    conn.endheaders()                                                 # no Content-Length
    assert conn.getresponse().status == 411
    monkeypatch.setattr(view_server.Films, "figures", lambda *args, **kwargs: 1 / 0)
    got, answer = served.request("POST", "/api/figures", json.dumps(good).encode())
    assert got == 500 and "ZeroDivisionError" in json.loads(answer)["error"]
    assert served.json("GET", "/api/state")[0] == 200                 # the server keeps serving


def test_uploads_are_bounded_and_checked(served, monkeypatch):
    monkeypatch.setattr(view_server, "MAX_UPLOAD", 4096)
    got, body = served.request("POST", "/api/upload", b"\0" * 5000)
    assert got == 413 and "limit" in json.loads(body)["error"]
    got, body = served.request("POST", "/api/upload", b"PNG not a dicom" * 20)
    assert got == 415 and "DICOM" in json.loads(body)["error"]
    got, body = served.request("POST", "/api/upload", b"\0" * 128 + b"DICM" + b"junk" * 50)
    answer = json.loads(body)["error"]
    assert got == 400 and "DICOM" in answer and "kit-view-" not in answer
    assert served.app._model is None          # refused before any model is loaded


class FakeModel:
    """kit.infer.predict.detect_raw's view of a model: config.BATCH_SIZE and detect()."""

    config = type("Config", (), {"BATCH_SIZE": 1})

    def __init__(self):
        self.calls = []

    def detect(self, images, masks=False):
        self.calls.append(images[0].copy())
        side = images[0].shape[0]
        return [{"rois": np.array([[side * 0.2, side * 0.3, side * 0.6, side * 0.7]]),  # symmetric
                 "scores": np.array([0.8]), "image_probs": np.array([0.7, 0.2, 0.1])}]


def test_an_opened_dicom_runs_the_model_with_flip_tta(served):
    model = FakeModel()
    served.app._model = model          # what load_inference_model would return
    data = Path(RunConfig.load(served.run / "config.json").data_dir)
    dcm = next((data / paths.TEST_IMAGES).glob("*.dcm"))
    got, body = served.request("POST", f"/api/upload?name={dcm.name}", dcm.read_bytes(),
                               {"Content-Type": "application/dicom"})
    film = json.loads(body)
    assert got == 200, film
    assert film["split"] == "upload" and film["p"] == pytest.approx(0.7) and film["top"] == 0.8
    assert len(model.calls) == 2                                      # the run's tta: flip
    np.testing.assert_array_equal(model.calls[1], model.calls[0][:, ::-1])
    assert film["id"] in served.json("POST", "/api/figures", asdict(TUNED))[1]["boxes"]["upload"]
    status, png = served.request("GET", f"/image/upload/{film['id']}.png")
    assert status == 200 and png.startswith(b"\x89PNG")
    assert served.json("GET", "/api/state")[1]["films"][-1]["id"] == film["id"]


def test_save_writes_postprocess_json_atomically_with_a_backup(served, monkeypatch):
    import kit.io

    replaced, real = [], os.replace
    monkeypatch.setattr(kit.io.os, "replace", lambda a, b: (replaced.append(Path(b).name), real(a, b)))
    before = (served.run / "postprocess.json").read_text()
    chosen = replace(TUNED, score_threshold=0.55, nms_iou=0.4)
    status, out = served.json("POST", "/api/save", asdict(chosen))
    assert status == 200, out
    assert PostProcess.from_json(served.run / "postprocess.json") == chosen
    assert (served.run / "postprocess.json.bak").read_text() == before
    assert replaced == ["postprocess.json.bak", "postprocess.json"]   # temp file + rename, each
    assert out["settings"] == asdict(chosen) == served.json("GET", "/api/state")[1]["saved"]
    assert not [p for p in served.run.iterdir() if p.name.endswith(".tmp")]
    status, out = served.json("POST", "/api/save", {**asdict(chosen), "max_boxes": 0})
    assert status == 400 and "max_boxes" in out["error"]
    assert PostProcess.from_json(served.run / "postprocess.json") == chosen   # untouched
    # the page compares against the tuned settings it started with, not the saved ones
    status, out = served.json("POST", "/api/figures", asdict(chosen))
    assert {c["field"] for c in out["changed"]} == {"score_threshold", "nms_iou"}


def test_command_serves_prints_its_address_and_starts_without_tensorflow(in_tmp):
    run = make_run(in_tmp, n_train=4, n_test=1)
    # Ctrl-C as in a terminal: pytest-xdist's workers ignore SIGINT, and an ignored SIGINT is
    # inherited across exec (Python then installs no KeyboardInterrupt handler)
    proc = subprocess.Popen([sys.executable, "-m", "kit", "view", "--run", str(run), "--port", "0"],
                            cwd=in_tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert lines[1].startswith("serving http://127.0.0.1:"), (lines, proc.stderr.read()
                                                                  if proc.poll() is not None else "")
        port = int(lines[1].split(":")[2].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/state")
        state = json.loads(conn.getresponse().read())
        assert state["run"] == run.name and state["tensorflow_imported"] is False
        assert "DICOM" in state["image_source"]                      # no cache: decoded
        conn.request("GET", f"/image/val/{state['films'][0]['id']}.png")
        assert conn.getresponse().read().startswith(b"\x89PNG")
        assert "4 validation + 1 test films" in lines[0]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"view did not stop within 30 s of Ctrl-C:\n{out}\n{err[-3000:]}")
    assert proc.returncode == 0 and "stopped" in out, err


def test_help_and_host_safety(capsys):
    assert cli.main(["view", "--help"]) == 0
    assert "--host" in capsys.readouterr().out
    assert "``view``" in (REPO / "kit/view/view.py").read_text().split('"""')[1].splitlines()[0]
    assert is_local("127.0.0.1") and is_local("localhost") and is_local("::1")
    assert not is_local("0.0.0.0") and not is_local("192.168.1.5")
    assert "postprocess.json" in exposure_warning("0.0.0.0", 8765)


@pytest.mark.slow
def test_an_opened_dicom_runs_the_real_model_of_the_run(in_tmp):
    """The whole upload path with TensorFlow: an untrained tiny model saved as best.h5 is loaded
    by the first upload only (kit.infer.predict.load_inference_model) and detects with flip."""
    run = make_run(in_tmp, n_train=4, n_test=1)
    data = RunConfig.load(run / "config.json").data_dir
    replace(get_preset("tiny"), data_dir=data).save(run / "config.json")
    code = ("import sys; from kit.config import RunConfig; from kit.mrcnn.config import config_from;"
            " from kit.mrcnn.model import MaskRCNN; from kit.mrcnn.weights import save_weights;"
            " cfg = RunConfig.load(sys.argv[1] + '/config.json');"
            " m = MaskRCNN('inference', config_from(cfg.mrcnn_fields()), sys.argv[1]);"
            " save_weights(m.keras_model, sys.argv[1] + '/best.h5')")
    subprocess.run([sys.executable, "-c", code, str(run)], check=True, cwd=in_tmp,
                   env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True)
    served = Served(run)
    try:
        assert served.json("GET", "/api/state")[1]["model_loaded"] is False
        dcm = next((Path(data) / paths.TEST_IMAGES).glob("*.dcm"))
        got, body = served.request("POST", "/api/upload?name=x.dcm", dcm.read_bytes())
        film = json.loads(body)
        assert got == 200, film
        assert film["split"] == "upload" and 0 <= film["p"] <= 1 and film["seconds"] > 0
        state = served.json("GET", "/api/state")[1]
        assert state["model_loaded"] and state["tensorflow_imported"]
        assert served.json("POST", "/api/figures", asdict(TUNED))[0] == 200
    finally:
        served.close()
