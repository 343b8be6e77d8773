"""Where things live. All generated data is under git-ignored data/ and runs/."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path("data")
RSNA_DIR = DATA / "rsna"          # real Kaggle data (make data)
DEMO_DIR = DATA / "demo"          # embedded synthetic data (kit demo-data)
CACHE_DIR = DATA / "cache"        # prepared images (kit prepare)
RUNS_DIR = Path("runs")
SUBMISSIONS_DIR = Path("submissions")
LEADERBOARD = SUBMISSIONS_DIR / "leaderboard.csv"

COMPETITION = "rsna-pneumonia-detection-challenge"
TRAIN_LABELS = "stage_2_train_labels.csv"
CLASS_INFO = "stage_2_detailed_class_info.csv"
SAMPLE_SUBMISSION = "stage_2_sample_submission.csv"
TRAIN_IMAGES = "stage_2_train_images"
TEST_IMAGES = "stage_2_test_images"
DEMO_TEST_LABELS = "demo_test_labels.csv"   # synthetic data only: hidden test ground truth

IMAGE_SIZE = 1024   # the competition's image side; boxes are in these pixels


def default_data_dir() -> Path:
    """data/rsna when the real data is there, else the embedded demo data in data/demo."""
    return RSNA_DIR if (RSNA_DIR / TRAIN_LABELS).is_file() else DEMO_DIR
