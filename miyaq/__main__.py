"""``python -m miyaq``: the command line, the same as the ``miyaq`` script
(for an environment whose scripts directory is not on ``PATH``)."""
import sys

from miyaq.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
