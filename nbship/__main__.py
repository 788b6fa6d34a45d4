import sys

from nbship.cli import main

sys.exit(main())
