"""rsna-kit: RSNA Pneumonia Detection Challenge, from DICOM to a scored submission.csv."""

__version__ = "0.1.0"
