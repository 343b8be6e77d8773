"""Stage view: the live page of a run (``python -m kit view``), at the top beside kit.flow.

films (the run's tables and images, the figures of a post-processing setting, computed by
kit.score), server (the standard-library HTTP server and its routes), page.html (the one
self-contained page), view (the command). TensorFlow is imported only when a DICOM is opened
on the page and the run's model has to run on it.
"""
