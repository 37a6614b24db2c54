import sys

from agbox.cli import main

sys.exit(main())
