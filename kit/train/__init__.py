"""Stage train: the Mask R-CNN schedule on the prepared cache -> a run folder with checkpoints.

trainer (stages, resume, the time budget's plan), callbacks (val_map each epoch, best.h5, the
budget meter), image_head (refit of the image-level classifier), dataset (RSNA -> kit.mrcnn
Dataset adapter). The ``train`` command itself is kit.flow.train (it may run the preflight).
"""
