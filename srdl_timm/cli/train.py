"""``srdl-train``: thin console script (the work is in the library)."""
import sys

from ..train import main

if __name__ == '__main__':
    sys.exit(main())
