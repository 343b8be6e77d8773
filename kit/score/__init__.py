"""Stage score: raw tables and submissions -> the competition's numbers. Never imports TensorFlow.

metric (the competition mAP, P/R/F1, ROC), postprocess (the only place thresholds apply), tune
(``tune``), score (``score``), submission (write/read/validate; ``validate``), submit
(``submit``), leaderboard (``leaderboard``).
"""
