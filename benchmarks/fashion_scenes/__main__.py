"""``python -m benchmarks.fashion_scenes --root DIR``: build (or reuse) Fashion Scenes, print its statistics."""
import sys

from .build import main

sys.exit(main())
