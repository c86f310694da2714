import sys

from bench.benchmark.cli import main

# Guarded: the benchmark's spawned child processes import this module as __mp_main__.
if __name__ == '__main__':
    sys.exit(main())
