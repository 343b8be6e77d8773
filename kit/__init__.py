"""rsna-kit: RSNA Pneumonia Detection Challenge, from DICOM to a scored submission.csv.

Importing ``kit`` sets the defaults that keep a log readable wherever the kit runs (``python -m
kit``, a Kaggle kernel calling ``kit.cli.main`` in-process, tests), before TensorFlow loads:

- TF_CPP_MIN_LOG_LEVEL=2: TensorFlow's C++ INFO/WARNING lines (oneDNN notices, one grappler
  "PredictCost" warning per CropAndResize op) are hidden; errors still show;
- TQDM_MININTERVAL=30 when stderr is not a terminal: a progress bar written to a log file
  updates every 30 s instead of many times a second.

Variables you set yourself win.
"""
import os as _os
import sys as _sys

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if not (hasattr(_sys.stderr, "isatty") and _sys.stderr.isatty()):
    _os.environ.setdefault("TQDM_MININTERVAL", "30")

__version__ = "0.1.0"
