import os
import sys

# TensorFlow's C++ INFO/WARNING lines (oneDNN notices, grappler cost-model warnings printed per
# CropAndResize op) drown the kit's own output; errors still show. Set it yourself to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kit.cli import main  # noqa: E402

sys.exit(main())
