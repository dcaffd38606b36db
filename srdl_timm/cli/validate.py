"""``srdl-validate``: thin console script (the work is in the library)."""
import sys

from ..validate import main

if __name__ == '__main__':
    sys.exit(main())
