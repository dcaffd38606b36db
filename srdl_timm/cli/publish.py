"""``srdl-publish``: thin console script (the work is in the library)."""
import sys

from ..hub import main

if __name__ == '__main__':
    sys.exit(main())
