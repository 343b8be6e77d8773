"""Stage data: the competition's files in, checked tables and a prepared-image cache out.

labels (label CSVs, validated; ``labels``), dicom (the only pydicom importer: read or refuse a
file in one line), pixels (windowing, luminance, resizing: numpy + Pillow), prepare (decode +
resize into data/cache; ``prepare``), split (patient-level split and folds; ``split``), demo and
demo_rsna (the embedded synthetic data sets, easy and hard; the ``demo-data`` command in
demo_data), weights (fetch + check initial weights; ``weights``). Imports only the base; never
TensorFlow.
"""
