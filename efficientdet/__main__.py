import sys

from efficientdet.cli import main

sys.exit(main())
