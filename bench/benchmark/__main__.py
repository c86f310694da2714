import sys

from bench.benchmark.cli import main

sys.exit(main())
