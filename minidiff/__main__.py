"""`python -m minidiff ...` is the `minidiff` command; torchrun starts it this way:

    torchrun --nproc_per_node=N -m minidiff train RECIPE [key=value ...]
"""
import sys

from minidiff.cli import main

if __name__ == "__main__":
    sys.exit(main())
