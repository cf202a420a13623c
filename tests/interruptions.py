"""A training run cut off mid-way (a killed job, a machine taken away), for the tests of resuming."""

from transformers import TrainerCallback


class Crash(RuntimeError):
    pass


class CrashAtStep(TrainerCallback):
    """Simulates a killed job: raises at the start of a step, after the previous step's checkpoint was written."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Crash(f"interrupted at step {self.step}")
