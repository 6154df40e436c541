#!/usr/bin/env python
"""Entry point: ``python run.py --help``."""

import sys

from s4al_ray.cli import main

if __name__ == "__main__":
    sys.exit(main())
