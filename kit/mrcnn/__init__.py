"""Mask R-CNN for Keras 3 (TensorFlow backend) with Matterport's API and layer names.

Importing ``kit.mrcnn`` imports nothing heavy; ``kit.mrcnn.config``, ``kit.mrcnn.utils`` and
``kit.mrcnn.augment`` are pure numpy, the graph modules (backbone, layers, heads, model) import
TensorFlow.
"""
