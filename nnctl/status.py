"""The statuses a run can have: one declaration read by training, the run folder and the commands."""

RUNNING = "running"
# How a run can end. "stopped_early" and "pruned" are clean ends (checkpoints kept, test metrics
# computed, exit code 0); "interrupted" is a signal (resumable, exit 130); "failed" an error.
CLEAN_ENDS = ("completed", "stopped_early", "pruned")
ENDS = (*CLEAN_ENDS, "failed", "interrupted")
STATUSES = (RUNNING, *ENDS)
# what a callback may ask the Trainer to end with (TrainState.request_stop)
STOP_REQUESTS = ("stopped_early", "pruned", "interrupted")
EXIT_CODES = {"completed": 0, "stopped_early": 0, "pruned": 0, "failed": 1, "interrupted": 130}
