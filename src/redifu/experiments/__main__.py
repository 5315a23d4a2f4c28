"""``python -m redifu.experiments``: the same as ``redifu experiment``."""

import argparse
import sys

from redifu.experiments.command import EPILOG, add_arguments, run

parser = argparse.ArgumentParser(prog="redifu experiment", description=run.__module__.__doc__,
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
add_arguments(parser)
sys.exit(run(parser.parse_args()))
