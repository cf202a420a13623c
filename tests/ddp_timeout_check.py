"""Launched by tests/test_distributed.py under torchrun (2 processes, CPU): does --ddp_timeout hold?

The example scripts' argument parsing runs on the command line given (flags, or one .json file); then process 1
stays away from a barrier that process 0 enters. Process 0 prints one JSON line: how the barrier ended and after how
long. Process 1 leaves once process 0 is done, or after 60 s (with gloo's default timeout, 30 minutes, process 0's
barrier would only fail then, when process 1's exit closes the connection).
"""

import json
import os
import sys
import time
from pathlib import Path

import torch.distributed as dist
from transformers import TrainingArguments

from dwatt.script_utils import parse_arguments

ABSENT_PROCESS_WAIT_S = 60


def main() -> None:
    done_file = Path(os.environ["DDP_TIMEOUT_CHECK_DONE_FILE"])
    (training_args,) = parse_arguments((TrainingArguments,))
    if training_args.process_index == 1:
        deadline = time.monotonic() + ABSENT_PROCESS_WAIT_S
        while not done_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        os._exit(0)  # skip the process group's teardown: process 0 is gone or going
    start = time.monotonic()
    try:
        dist.barrier()
        outcome = "returned"
    except Exception as error:  # gloo raises RuntimeError (its subclass DistBackendError in recent torch)
        outcome = f"raised {type(error).__name__}: {str(error).splitlines()[0][:200]}"
    report = {"outcome": outcome, "elapsed_s": round(time.monotonic() - start, 1),
              "world_size": training_args.world_size, "backend": dist.get_backend()}
    print("DDP_TIMEOUT_CHECK " + json.dumps(report), flush=True)
    done_file.write_text("done")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
