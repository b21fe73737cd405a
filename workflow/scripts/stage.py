"""Thin entry point the rules call: `python workflow/scripts/stage.py STAGE [args]`.

It only puts the package on the path and hands over, so a stage runs the same from a rule, a
shell, a cluster node or `torchrun --nproc_per_node N workflow/scripts/stage.py train ...`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imageclf.__main__ import main  # noqa: E402

main()
