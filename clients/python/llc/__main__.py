import sys

from llc.cli import main

sys.exit(main())
