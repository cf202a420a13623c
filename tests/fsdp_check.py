"""FSDP2 smoke check of DWAtt models, run by tests/test_fsdp.py as `torchrun --nproc_per_node 2 fsdp_check.py OUT`.

On CPU with gloo, for a token classifier (dwatt head) and a sequence classifier (scalar_mix head):
1. shards the model with `fully_shard` (each encoder layer, then the whole model), as FSDP2 / accelerate do;
2. reads the depth weights through dwatt's logging callback code (a forward on every rank / a gathered DTensor);
3. trains one SGD step, each rank on its half of the batch, with the loss normalised like DWAttTrainer's;
4. gathers the full state dict and saves it with `save_pretrained` the way DWAttTrainer does under FSDP.
Rank 0 compares with the unsharded model and writes a JSON report to OUT; the test asserts on it.
"""

import copy
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_trainer_loop import LR, collate, make_examples, make_model, max_difference, reference_sgd_step  # noqa: E402

from dwatt import DWAttForSequenceClassification, DWAttForTokenClassification  # noqa: E402
from dwatt.callbacks import current_depth_weights  # noqa: E402
from dwatt.distributed import unsharded_class  # noqa: E402
from dwatt.trainer import AccumulationExactLoss  # noqa: E402


def check(task: str, fusion: str, rank: int, world: int, out: Path) -> dict:
    model = make_model(task, fusion=fusion)  # the same seed on every rank: the same initial weights
    examples = make_examples(task, 16, seed=5)
    _, expected = reference_sgd_step(model, examples, LR)
    probe = collate(examples[:8])
    expected_depth = current_depth_weights(model, probe)

    sharded = copy.deepcopy(model)
    for layer in sharded.dwatt.encoder.encoder.layer:
        fully_shard(layer)
    fully_shard(sharded)
    report = {"class": type(sharded).__name__, "unsharded_class": unsharded_class(sharded).__name__}
    report["depth_weights_difference"] = float(abs(current_depth_weights(sharded, probe) - expected_depth).max())

    # One step on this rank's half. FSDP averages gradients over ranks, so scale by the world size a loss that is
    # normalised by the labelled items of the whole (global) batch.
    batch = collate(examples[rank * 8 : (rank + 1) * 8])
    labels = batch.pop("labels")
    count = labels.ne(-100).sum().float()
    dist.all_reduce(count)
    sharded.train()
    loss = AccumulationExactLoss(sharded.config)(sharded(**batch), labels, count) * world
    loss.backward()
    optimizer = torch.optim.SGD(sharded.parameters(), lr=LR)
    optimizer.step()

    full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        report["weights_difference"] = max_difference({k: v for k, v in full.items()}, expected)
        folder = out.parent / f"saved-{task}"
        sharded.save_pretrained(folder, state_dict=dict(full))  # save_pretrained empties the dict it is given
        report["class_after_save"] = type(sharded).__name__
        report["files"] = sorted(p.name for p in folder.iterdir())
        report["auto_map"] = json.loads((folder / "config.json").read_text())["auto_map"]
        task_class = DWAttForTokenClassification if task == "token" else DWAttForSequenceClassification
        reloaded = task_class.from_pretrained(folder).eval()
        reference = copy.deepcopy(model)
        reference.load_state_dict(expected)
        with torch.no_grad():
            batch = collate(examples)
            batch.pop("labels")
            report["reloaded_logits_difference"] = float((reloaded(**batch).logits - reference.eval()(**batch).logits).abs().max())
    return report


def main() -> int:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    reports = {task: check(task, fusion, rank, world, out) for task, fusion in (("token", "dwatt"), ("sequence", "scalar_mix"))}
    if rank == 0:
        out.write_text(json.dumps({"world_size": world, **reports}, indent=2))
    dist.barrier()  # rank 0's report is written before any process leaves
    return 0


if __name__ == "__main__":
    status = main()  # a failed check raises here, and the process exits non-zero the usual way
    # Then skip the interpreter's teardown: with FSDP's DTensors and gloo's worker threads still alive, it aborted a
    # rank once in CI ("terminate called without an active exception", SIGABRT) after every check had passed and the
    # report was written. Teardown is not what this check is about; a clean exit code for finished work is.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
