import sys

from e2e.demo.cli import main

sys.exit(main(sys.argv[1:]))
