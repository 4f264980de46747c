import sys

from iterpo.cli import main

sys.exit(main())
