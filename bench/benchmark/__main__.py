import sys

from bench.benchmark.cli import main

# Guarded, as every module a spawned child process may import must be
# (bench.benchmark.child starts some).
if __name__ == '__main__':
    sys.exit(main())
