"""Kaggle integration: credentials check, lazy client, safe unzip, kernel bundling, push/submit.

Nothing here imports the ``kaggle`` package at import time: importing it authenticates and
prints a long help text when there are no credentials. ``kit.kaggle.api`` imports it inside
each call, after ``kit.kaggle.creds.require_credentials`` has checked them.
"""
