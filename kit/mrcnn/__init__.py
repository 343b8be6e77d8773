"""Mask R-CNN for Keras 3 (TensorFlow backend) with Matterport's API and layer names.

Importing ``kit.mrcnn`` imports nothing heavy; ``kit.mrcnn.config`` and ``kit.mrcnn.utils`` are
pure numpy, the graph modules (backbone, layers, heads, model) import TensorFlow.
"""
