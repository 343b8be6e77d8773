"""Stage infer: a run's model -> raw detections; raw tables of several runs -> one.

predict (raw_<split>.csv, flip TTA; ``predict``), fusion (numpy weighted box fusion: the one
entry point is ``fuse_raw``), ensemble (fused run folders from folds or seeds; ``ensemble``).
"""
