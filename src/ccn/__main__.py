import sys

from ccn.cli import main

sys.exit(main())
