"""Command ``view``: a run's live page on a local web server; prints its address.

``python -m kit view [--run RUN] [--port N] [--host 127.0.0.1]`` serves one self-contained page
(no CDN, works offline) that shows:

1. every validation and test film of the run (prepared cache, else the DICOM) with its ground
   truth (validation), the post-processed boxes and their scores, P(opacity) and the film's own
   image score; zoom and pan, keyboard next / previous;
2. a control for every setting kit.score.postprocess.PostProcess applies, starting from the
   run's postprocess.json; as one moves, the boxes and the validation figures (competition mAP,
   P/R/F1 at IoU 0.25/0.5/0.75, images with a false box) are recomputed by kit.score on the raw
   tables in the server;
3. sorting and filtering for error analysis: image score (worst first), false positives on
   negatives, missed boxes, class;
4. "use these settings": writes postprocess.json atomically (the old one kept as
   postprocess.json.bak), so ``make submit`` uses them; the page says when the settings differ
   from the tuned ones;
5. "open a DICOM": the run's model on an uploaded file, with flip TTA as the run predicts
   (TensorFlow is imported by that request only).

It binds 127.0.0.1 unless ``--host`` says otherwise, serves only the run's own files and its
films, and answers every bad request with a status and a message (kit.view.server).
"""
from __future__ import annotations

import argparse
import ipaddress
import time
from pathlib import Path

from kit import paths
from kit.errors import KitError
from kit.runs import resolve_run

DEFAULT_PORT = 8765


def add_view_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", default="latest", help="run folder, name or 'latest' (needs "
                   "config.json, val_ids.csv, raw_val.csv, postprocess.json)")
    p.add_argument("--runs-dir", type=Path, default=paths.RUNS_DIR,
                   help="folder of the run folders (default: runs/)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 "
                        "exposes the page to the network, without a login)")
    p.add_argument("--checkpoint", default="best", metavar="best|last|PATH",
                   help="weights for an opened DICOM (default best, as predict)")
    p.add_argument("--tta", choices=["none", "flip"], default=None,
                   help="test-time augmentation for an opened DICOM (default: the run's config)")


def is_local(host: str) -> bool:
    """Whether binding ``host`` keeps the page on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int) -> str:
    """What binding a non-loopback address exposes (printed by ``view``)."""
    return (f"warning: --host {host} exposes this page on port {port} to every machine that "
            "can reach this one, with no login: they can see the run's films, labels and files "
            "(config, raw tables, pictures), overwrite its postprocess.json, and run its model "
            "on DICOMs they upload. Use it on a trusted network only.")


def run_view(args: argparse.Namespace) -> int:
    from kit.view.films import Films
    from kit.view.server import ViewApp, make_server

    start = time.perf_counter()
    run = resolve_run(args.run, args.runs_dir)
    films = Films.from_run(run)
    app = ViewApp(run, films, checkpoint=args.checkpoint, tta=args.tta)
    try:
        server = make_server(app, args.host, args.port)
    except OSError as exc:
        raise KitError(f"cannot serve on {args.host}:{args.port} ({exc.strerror or exc}); "
                       "pick another --port (0: any free one)") from None
    port = server.server_address[1]
    shown = args.host if is_local(args.host) else "127.0.0.1"
    source = films.images.source if films.images else "no images"
    print(f"view: run {run.name}: {len(films.ids):,} validation + {len(films.test_ids):,} test "
          f"films ({source}); loaded in {time.perf_counter() - start:.1f} s", flush=True)
    if not is_local(args.host):
        print(exposure_warning(args.host, port), flush=True)
    print(f"serving http://{shown}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("view: stopped", flush=True)
    finally:
        server.server_close()
    return 0
