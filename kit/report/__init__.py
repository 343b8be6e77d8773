"""Stage report: a run folder -> report.md, the study's table and its pictures (``report``).

report (the run report and the results table), plots (every matplotlib figure of the kit).
Never imports TensorFlow.
"""
