"""``python -m mxfs_csi``: the same as ``mxfs csi``, without the rest of the CLI."""

import argparse
import sys

from mxfs.errors import MxfsError
from mxfs_csi.cli import add_arguments, run


def main() -> int:
    parser = argparse.ArgumentParser(prog="mxfs csi", description=__doc__)
    add_arguments(parser)
    try:
        return run(parser.parse_args())
    except (MxfsError, ValueError, OSError) as exc:
        print(f"mxfs csi: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
