import sys

from medad.cli import main

sys.exit(main())
