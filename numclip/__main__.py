"""`python -m numclip`: the CLI, also what `torchrun -m numclip train ...` starts in each process."""

import sys

from numclip.warm import main

sys.exit(main())
