import sys

from runnerkeep_cli.main import main

sys.exit(main())
