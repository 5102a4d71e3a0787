"""``python -m mxfs_csi``: the same as ``mxfs csi``, without the rest of the CLI."""

import argparse
import sys

from mxfs_csi.cli import add_arguments, run


def main() -> int:
    parser = argparse.ArgumentParser(prog="mxfs csi", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
