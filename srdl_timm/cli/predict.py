"""``srdl-predict``: thin console script (the work is in the library)."""
import sys

from ..predict import main

if __name__ == '__main__':
    sys.exit(main())
