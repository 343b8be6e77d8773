"""The live page's HTTP server: the standard library's ThreadingHTTPServer and its routes.

Routes (JSON answers; every error is ``{"error": message}`` with a 4xx/5xx status):

    GET  /                          the page (kit/view/page.html: one file, no CDN)
    GET  /api/state                 run, tuned settings, every film (val, test, uploads)
    POST /api/figures[?test=0]      settings -> validation figures + the films' kept boxes
                                    (test=0: not the test films')
    POST /api/save                  settings -> postprocess.json (atomic; the old one -> .bak)
    GET  /api/raw/<split>/<id>      a film's raw (unthresholded) detections
    GET  /image/<split>/<id>.png    a film (prepared image or decoded DICOM) as PNG
    GET  /run/<file>                one of the run's own files (png, csv, json, md; no folders)
    POST /api/upload?name=F.dcm     a DICOM (body, <= MAX_UPLOAD bytes): run the run's model on it

Films are looked up by id in the run's own lists, never by a path from the request, and
/run/ serves plain file names of the run folder only, so no request reaches another file.
TensorFlow is imported by the first upload only (kit.infer.predict.load_inference_model).
"""
from __future__ import annotations

import io
import json
import re
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from kit.errors import KitError
from kit.io import write_text
from kit.score.postprocess import PostProcess
from kit.view.films import Films, settings_from

PAGE = Path(__file__).with_name("page.html")
MAX_JSON = 64 * 1024                 # bytes of a settings request
MAX_UPLOAD = 32 * 1024 * 1024        # bytes of an uploaded DICOM (Kaggle's are ~150 KB)
RUN_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\.(png|csv|json|md)$")
CONTENT_TYPES = {".png": "image/png", ".csv": "text/csv; charset=utf-8",
                 ".json": "application/json", ".md": "text/markdown; charset=utf-8"}


class HttpError(Exception):
    """A request the server refuses: status and a one-line message for the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 (H, W) grayscale -> PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class ViewApp:
    """What the routes do, apart from HTTP: a run's films, its model (lazily), the save."""

    def __init__(self, run: Path, films: Films, checkpoint: str = "best", tta: str | None = None):
        self.run, self.films, self.checkpoint = Path(run), films, checkpoint
        self.tta = tta
        self._model = None
        self._model_lock, self._save_lock, self._upload_lock = (threading.Lock() for _ in range(3))

    # ---- state, figures, save --------------------------------------------------------------
    def state(self) -> dict:
        images = self.films.images
        return {"run": self.films.name, "tuned": asdict(self.films.tuned),
                "saved": self.saved_settings(),
                "has_image_scores": self.films.val_scores is not None,
                "image_source": images.source if images else None,
                "image_size": images.size if images else None,
                "files": sorted(p.name for p in self.run.iterdir()
                                if p.is_file() and RUN_FILE.match(p.name)),
                "max_upload": MAX_UPLOAD, "model_loaded": self._model is not None,
                "tensorflow_imported": "tensorflow" in sys.modules,
                "films": self.films.film_list()}

    def saved_settings(self) -> dict | None:
        """postprocess.json as it is on disk now (None when missing or unreadable)."""
        try:
            return asdict(PostProcess.from_json(self.run / "postprocess.json"))
        except KitError:
            return None

    def save(self, data: object) -> dict:
        """Write the settings to postprocess.json atomically; the previous file -> .bak first."""
        post = settings_from(data)
        target = self.run / "postprocess.json"
        backup = target.with_name(target.name + ".bak")
        with self._save_lock:
            if target.is_file():
                write_text(backup, target.read_text())
            post.to_json(target)
        return {"saved": str(target), "backup": str(backup) if backup.is_file() else None,
                "settings": self.saved_settings()}

    # ---- an opened DICOM ------------------------------------------------------------------
    def model(self):
        """The run's inference model, loaded on first use (this imports TensorFlow)."""
        with self._model_lock:
            if self._model is None:
                try:
                    from kit.infer.predict import load_inference_model

                    self._model = load_inference_model(self.run, self.checkpoint)
                except ImportError as exc:
                    raise HttpError(503, f"cannot run the model here: {exc} (make setup "
                                         "installs TensorFlow)") from None
                except KitError as exc:
                    raise HttpError(409, f"cannot run the run's model: {exc}") from None
            return self._model

    def upload(self, body: bytes, name: str) -> dict:
        """Check ``body`` is a DICOM, decode it at the run's size, run the model (flip TTA as
        the run's config says), keep it as a film; returns the film."""
        from kit.data import dicom

        if len(body) < 132 or body[128:132] != b"DICM":
            raise HttpError(415, "not a DICOM file: no 'DICM' marker at byte 128 (Part 10 file)")
        images = self.films.images
        if images is None:
            raise HttpError(409, "this page has no image size to decode at (no run config)")
        with tempfile.TemporaryDirectory(prefix="kit-view-") as folder:
            path = Path(folder) / "upload.dcm"
            path.write_bytes(body)
            try:
                image, meta = dicom.read_image(path, images.size)
            except KitError as exc:
                reason = str(exc).replace(f"{path}: ", "").replace(str(path), "the file")
                raise HttpError(400, f"cannot read the uploaded DICOM: {reason}") from None
        start = time.perf_counter()
        with self._upload_lock:
            raw, scores = self.detect(image)
        p = float(scores["p_opacity"].iloc[0]) if len(scores) else None
        label = meta.get("patientId") or name
        upload = self.films.add_upload(f"{name} ({label})" if label != name else name,
                                       image, raw, p, time.perf_counter() - start)
        return self.films.upload_film(upload)

    def detect(self, image: np.ndarray):
        """(raw detections, image scores) of one S-px image, as kit.infer.predict makes them."""
        from kit.config import RunConfig
        from kit.data.prepare import as_rgb
        from kit.infer.predict import detect_raw

        model = self.model()
        tta = self.tta or RunConfig.load(self.run / "config.json").tta
        return detect_raw(model, [as_rgb(image)], ["upload"], image.shape[0], tta=tta, batch=1)

    # ---- files ------------------------------------------------------------------------------
    def image(self, split: str, pid: str) -> bytes:
        if not self.films.has(split, pid):
            raise HttpError(404, f"no {split} film {pid!r} in this run")
        if split == "upload":
            return png_bytes(self.films.uploads[pid].image)
        if self.films.images is None:
            raise HttpError(404, "this page has no images")
        try:
            return png_bytes(self.films.images.load(split, pid))
        except (KitError, OSError) as exc:   # the film is the run's, its image is not here
            raise HttpError(404, f"film {pid!r} cannot be shown: {exc}") from None

    def run_file(self, name: str) -> tuple[bytes, str]:
        if "/" in name or "\\" in name or ".." in name:
            raise HttpError(403, "only the run folder's own files are served (no paths)")
        path = self.run / name
        if not RUN_FILE.match(name) or not path.is_file() \
                or path.resolve().parent != self.run.resolve():
            raise HttpError(404, f"no such run file {name!r} (png, csv, json or md of the run)")
        return path.read_bytes(), CONTENT_TYPES[path.suffix]


class Handler(BaseHTTPRequestHandler):
    """Routes requests to ``server.app`` (a :class:`ViewApp`); every error answers JSON."""

    server_version = "kit-view/1"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def do_HEAD(self) -> None:
        self._answer("HEAD")

    def do_PUT(self) -> None:
        self._answer("PUT")

    def do_DELETE(self) -> None:
        self._answer("DELETE")

    def do_PATCH(self) -> None:
        self._answer("PATCH")

    def do_OPTIONS(self) -> None:
        self._answer("OPTIONS")

    def _answer(self, method: str) -> None:
        try:
            status, body, ctype = 200, *self._route(method)
        except HttpError as exc:
            status, body, ctype = exc.status, self._error(str(exc)), "application/json"
        except KitError as exc:
            status, body, ctype = 400, self._error(str(exc)), "application/json"
        except Exception as exc:    # a bug or a model failure: say so, keep serving
            traceback.print_exc(file=sys.stderr)
            status, body = 500, self._error(f"server error: {type(exc).__name__}: {exc}")
            ctype = "application/json"
        if status >= 400:      # a refused request's body may be unread: do not reuse the line
            self.close_connection = True
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    @staticmethod
    def _error(message: str) -> bytes:
        return json.dumps({"error": message}).encode()

    def _json(self, obj: object) -> tuple[bytes, str]:
        return json.dumps(obj, separators=(",", ":")).encode(), "application/json"

    def _body(self, limit: int) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise HttpError(411, "the request needs a Content-Length")
        try:
            n = int(length)
        except ValueError:
            self.close_connection = True
            raise HttpError(400, f"bad Content-Length {length!r}") from None
        if n < 0 or n > limit:
            self.close_connection = True
            raise HttpError(413, f"request body of {n:,} bytes is over the limit of {limit:,}")
        return self.rfile.read(n)

    def _json_body(self) -> object:
        try:
            return json.loads(self._body(MAX_JSON) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"the body is not JSON ({exc})") from None

    def _route(self, method: str) -> tuple[bytes, str]:
        app: ViewApp = self.server.app
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        if method not in ("GET", "POST"):
            raise HttpError(405, f"{method} is not served here (GET and POST only)")
        if method == "POST":
            test = parse_qs(url.query).get("test", ["1"])[0] != "0"
            handlers = {("api", "figures"): lambda: app.films.figures(
                            settings_from(self._json_body()), test=test),
                        ("api", "save"): lambda: app.save(self._json_body()),
                        ("api", "upload"): lambda: app.upload(
                            self._body(MAX_UPLOAD),
                            (parse_qs(url.query).get("name") or ["upload.dcm"])[0][:120])}
            handler = handlers.get(tuple(parts))
            if handler is None:
                raise HttpError(405 if url.path in ("/", "/api/state") else 404,
                                f"no POST route {url.path}")
            return self._json(handler())
        if url.path in ("/", "/index.html"):
            return PAGE.read_bytes(), "text/html; charset=utf-8"
        if parts == ["api", "state"]:
            return self._json(app.state())
        if len(parts) == 4 and parts[:2] == ["api", "raw"]:
            if not app.films.has(parts[2], parts[3]):
                raise HttpError(404, f"no {parts[2]} film {parts[3]!r} in this run")
            return self._json(app.films.raw_boxes(parts[2], parts[3]))
        if len(parts) == 3 and parts[0] == "image" and parts[2].endswith(".png"):
            return app.image(parts[1], parts[2][:-4]), "image/png"
        if parts[0] == "run" and len(parts) >= 2:
            if len(parts) > 2 or ".." in parts[1:]:
                raise HttpError(403, "only the run folder's own files are served (no paths)")
            return app.run_file(parts[1])
        if parts == ["favicon.ico"]:
            raise HttpError(404, "no icon")
        raise HttpError(404, f"no route {url.path}")

    def log_request(self, code: object = "-", size: object = "-") -> None:
        if isinstance(code, int) and code >= 400 or str(code).startswith(("4", "5")):
            super().log_request(code, size)


def make_server(app: ViewApp, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A bound (not yet serving) server for ``app``; ``port`` 0 picks a free one."""
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.app = app
    return server
