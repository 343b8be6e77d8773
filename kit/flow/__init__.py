"""Stage flow: commands that run the other stages in order.

submission (the whole flow; ``submission``), train (the ``train`` command: preflight, then the
trainer), preflight (the whole flow on 2 images), kernel (the in-kernel driver of kernels/).
"""
