import sys

from kit.cli import exit_process, main  # importing kit sets the log defaults (kit/__init__.py)
from kit.log import quiet_native_logs

quiet_native_logs()      # TensorFlow 2.20's C++ warnings ignore TF_CPP_MIN_LOG_LEVEL
exit_process(main())
