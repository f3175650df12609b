import sys

from flowzoo.cli import main

sys.exit(main())
