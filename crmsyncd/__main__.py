import sys

from crmsyncd.cli import main

sys.exit(main())
