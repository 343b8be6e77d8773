"""Benchmark the live page (`kit view`): seconds from a moved control to the validation figures.

1,500 validation films (boxes drawn like the real labels' 22.5 % positives) with ~8,600 raw rows
and 3,000 test films, served by kit.view on a loopback port; each setting is POSTed to
/api/figures as the page does (JSON included). Prints one JSON object: per setting, the best and
median round trip of 5 and the server's own metric time (val_ms), in milliseconds.
Usage: .venv/bin/python bench/view.py [--repeat 5]
"""
from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kit.score.postprocess import PostProcess  # noqa: E402
from kit.view.films import Films  # noqa: E402
from kit.view.server import ViewApp, make_server  # noqa: E402

TUNED = PostProcess(score_threshold=0.3, image_threshold=0.0, box_scale=1.0, max_boxes=3)


def fake_raw(ids, gt, rng: np.random.Generator) -> pd.DataFrame:
    """Each GT box found (jittered) and 0-3 false boxes per image, scores spread over (0, 1)."""
    rows = []
    for pid in ids:
        for box in (gt or {}).get(pid, np.zeros((0, 4))):
            if rng.uniform() < 0.85:
                x, y, w, h = box + rng.normal(0, 25, 4)
                rows.append((pid, rng.uniform(0.35, 1), x, y, max(w, 20), max(h, 20)))
        for _ in range(rng.integers(0, 4)):
            rows.append((pid, rng.uniform(0.05, 0.9), *rng.uniform(50, 600, 2),
                         *rng.uniform(60, 300, 2)))
    raw = pd.DataFrame(rows, columns=["patientId", "score", "x", "y", "w", "h"])
    return raw.assign(x=raw.x.clip(0, 900), y=raw.y.clip(0, 900))


def films(n_val: int = 1500, n_test: int = 3000, seed: int = 0) -> Films:
    rng = np.random.default_rng(seed)
    ids = [f"v{i:05d}" for i in range(n_val)]
    gt = {p: np.column_stack([rng.uniform(100, 600, (k, 2)), rng.uniform(100, 300, (k, 2))])
          for p, k in zip(ids, rng.choice([0, 1, 2], n_val, p=[0.775, 0.1, 0.125]))}
    raw = pd.concat([fake_raw(ids, gt, rng) for _ in range(3)], ignore_index=True)
    test_ids = [f"t{i:05d}" for i in range(n_test)]
    raw_test = pd.concat([fake_raw(test_ids, None, rng) for _ in range(3)], ignore_index=True)
    return Films(name="bench", ids=ids, gt=gt, raw_val=raw, tuned=TUNED, test_ids=test_ids,
                 raw_test=raw_test, val_scores={p: float(rng.uniform()) for p in ids})


def measure(f: Films, repeat: int = 5) -> dict:
    """{setting: {best_ms, median_ms, metric_ms}} over HTTP on a loopback port."""
    import tempfile

    with tempfile.TemporaryDirectory() as run:
        server = make_server(ViewApp(Path(run), f), "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]

        def ask(post: PostProcess, test: int, n: int) -> dict:
            runs = []
            for _ in range(n):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                start = time.perf_counter()
                conn.request("POST", f"/api/figures?test={test}", json.dumps(asdict(post)),
                             {"Content-Type": "application/json"})
                out = json.loads(conn.getresponse().read())
                runs.append((time.perf_counter() - start, out["val_ms"] / 1e3))
                conn.close()
            t = np.array(runs) * 1e3
            return {"best_ms": round(float(t[:, 0].min()), 1),
                    "median_ms": round(float(np.median(t[:, 0])), 1),
                    "metric_ms": round(float(np.median(t[:, 1])), 1)}

        try:
            return {"tuned": ask(TUNED, 0, repeat),
                    "threshold 0.05, 10 boxes": ask(replace(TUNED, score_threshold=0.05,
                                                            max_boxes=10), 0, repeat),
                    "tuned + test films' boxes": ask(TUNED, 1, repeat),
                    "first move to NMS IoU 0.3": ask(replace(TUNED, nms_iou=0.3), 0, 1)}
        finally:
            server.shutdown()
            server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    f = films()
    print(json.dumps({"val_images": len(f.ids), "raw_rows": int(len(f.raw_val)),
                      "settings": measure(f, args.repeat)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
