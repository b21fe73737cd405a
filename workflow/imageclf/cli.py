"""`imageclf STAGE [args]`: run one stage of the workflow, from a rule, a shell, a cluster node or
under `torchrun --nproc_per_node N -m imageclf train ...`."""

from __future__ import annotations

import importlib
import logging
import sys

from .core.errors import UserError
from .core.stages import STAGES


def usage() -> str:
    lines = ["usage: imageclf STAGE [--help] [args]", "", "stages:"]
    lines += [f"  {name:<12} {what}" for name, (_, _, what) in STAGES.items()]
    lines += ["", "imageclf gpus K [--] COMMAND...   run COMMAND on K GPUs of its own (CUDA_VISIBLE_DEVICES),",
              "                                   waiting while other jobs hold them (core/gpu_slots.py)"]
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    if argv[0] == "gpus":  # a wrapper around a stage's command (the rules' train and predict), not a stage
        from .core import gpu_slots

        gpu_slots.main(argv[1:])
        return
    if argv[0] not in STAGES:
        print(f"imageclf: unknown stage '{argv[0]}'\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    module_name, function, _ = STAGES[argv[0]]
    module = importlib.import_module(f"imageclf.{module_name}")
    try:
        getattr(module, function)(argv[1:])
    except UserError as error:  # bad input: one clear message, on the console and in the log
        logging.getLogger("imageclf").error("%s", error)
        raise SystemExit(1) from None
    except Exception:
        logging.getLogger("imageclf").exception("%s failed", argv[0])
        raise SystemExit(1) from None
