import sys

from sharpml_operator.cli import main

sys.exit(main())
