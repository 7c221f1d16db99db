"""Errors a run reports as one line, and the exit status ``main.py`` gives each.

Every expected failure (bad config, bad data, unusable checkpoint, a
diverged run, a preemption) is an exception of this module carrying its exit
status; ``main.py`` prints ``error: <message>`` and exits with that status.
Set ``RESKD_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_INPUT = 2     # a config key, data set, file or checkpoint that cannot work
EXIT_NON_FINITE = 3    # the loss or gradient norm became NaN/inf; last good checkpoint kept
EXIT_PROCESS_LOST = 4  # another process of a multi-process run died; rerun to resume
EXIT_PREEMPTED = 143   # stopped by SIGTERM/SIGINT/SIGHUP (128 + 15) after a complete checkpoint


class ReskdError(Exception):
  """Base class: an expected failure, reported as one line."""
  exit_status = EXIT_BAD_INPUT


class ConfigError(ReskdError, ValueError):
  """A config value that cannot work; the message names the key."""


class DataError(ReskdError, ValueError):
  """A data set that is missing, damaged or does not match the config."""


class CheckpointError(ReskdError):
  """No usable checkpoint, or one that does not fit the config."""


class WeightsError(CheckpointError, ValueError):
  """A weights file that cannot be read, or does not fit the requested architecture."""


class NonFiniteError(ReskdError):
  """Training produced a non-finite loss or gradient norm."""
  exit_status = EXIT_NON_FINITE
