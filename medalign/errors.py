"""Errors a user can act on: the CLI prints them as one line and exits non-zero, no traceback.

Exit codes (docs/scheduling.md): 0 done; 1 a stage failed; 2 bad config or input; 3 lock timeout;
4 drift detected (`medalign drift`); 75 preempted, resumable.
"""


class MedalignError(Exception):
    """Bad input the user can fix; the message names the thing that is wrong."""

    exit_code = 1


class ConfigError(MedalignError):
    exit_code = 2


class DataError(MedalignError):
    """A manifest or image that cannot be used as it is."""

    exit_code = 2  # bad input, as a bad config is: rerunning will not help, fixing the input will


class CheckpointError(MedalignError):
    """A weights file that does not fit the model it is loaded into."""

    exit_code = 2


def one_line(e: BaseException) -> str:
    """An exception's message on one line: pydicom, for one, spreads its plugin list over many."""
    if type(e).__name__ == "UnidentifiedImageError":  # Pillow's, named without importing Pillow here
        return "not an image file Pillow can identify"
    text = ""
    for line in (line.strip() for line in str(e).splitlines()):
        if line:
            text += line if not text else (" " if text.endswith(":") else "; ") + line
    return text or type(e).__name__


class LockTimeout(MedalignError):
    """Another run holds the lock on a step's output for longer than --lock-timeout."""

    exit_code = 3


class Preempted(MedalignError):
    """SIGTERM or SIGUSR1 (SLURM before a time limit): resume state is written; rerun to continue."""

    exit_code = 75  # EX_TEMPFAIL from sysexits.h: "try again later", what a requeue script checks for
