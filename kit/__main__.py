import sys

from kit.cli import main  # importing kit sets the log defaults (see kit/__init__.py)

sys.exit(main())
