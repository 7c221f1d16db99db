"""train_utils on its own: warnings, the committed metric writer, progress, the stop latch.

In-process and fast. The signal tests send real signals to this process; a fixture puts
a harmless handler in front of them (so a broken latch fails the test instead of killing
pytest) and restores the process's handlers and the latch's module state afterwards.
"""

import io
import logging
import os
import signal
import threading
import time

import jax
import numpy as np
import pytest

from reskd_jax import train_utils


# ----------------------------------------------------------------------------- warn
def test_warn_is_one_line_on_stderr_of_process_0_only(capsys, monkeypatch):
  train_utils.warn("the teacher saw 8 frames")
  assert capsys.readouterr() == ("", "warning: the teacher saw 8 frames\n")
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  train_utils.warn("said once, by process 0")
  assert capsys.readouterr() == ("", "")


# ----------------------------------------------------------------------------- chatter
@pytest.fixture
def restore_log_filters():
  """drop_library_chatter adds filters to process-wide loggers: take them off again."""
  from absl import logging as absl_logging
  owners = [logging.getLogger("absl"), logging.getLogger("orbax"),
            absl_logging.get_absl_handler()]
  saved = [list(owner.filters) for owner in owners]
  yield owners
  for owner, filters in zip(owners, saved):
    owner.filters[:] = filters


def _record(name, message):
  return logging.LogRecord(name, logging.WARNING, __file__, 1, message, None, None)


def test_drop_library_chatter_filters_only_the_chatter(restore_log_filters, caplog):
  from absl import logging as absl_logging
  train_utils.drop_library_chatter()
  train_utils.drop_library_chatter()  # once more (train then eval): no second filter
  for owner in restore_log_filters:
    assert sum(isinstance(f, train_utils._DropChatter) for f in owner.filters) == 1, owner
    chatter = _record("orbax", "Removing existing directory since it is not finalized: /w/7")
    assert not owner.filter(chatter), owner
    assert not owner.filter(_record("absl", "no _CHECKPOINT_METADATA file in /w/3"))
    assert owner.filter(_record("orbax", "checkpoint step 7 is corrupt")), owner
  # End to end through absl (orbax logs with absl): only the real problem gets out.
  caplog.set_level(logging.WARNING)
  absl_logging.warning("step 3 has no _CHECKPOINT_METADATA file")
  absl_logging.warning("could not write step 4")
  assert [r.getMessage() for r in caplog.records] == ["could not write step 4"]


# ----------------------------------------------------------------------------- metric writer
def _events(workdir):
  """(step, tag, value) of the scalars in ``workdir``'s TensorBoard event files."""
  import tensorflow as tf
  out = []
  for name in sorted(os.listdir(workdir)):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, name)):
      for value in event.summary.value:
        out.append((event.step, value.tag, float(tf.make_ndarray(value.tensor))))
  return out


def test_create_metric_writer_event_files_on_process_0_only(tmp_path, monkeypatch):
  writer = train_utils.create_metric_writer(str(tmp_path / "p0"))
  writer.write_scalars(3, {"train/loss": 1.5})
  writer.close()
  assert _events(tmp_path / "p0") == [(3, "train/loss", 1.5)]
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  os.makedirs(tmp_path / "p1")
  writer = train_utils.create_metric_writer(str(tmp_path / "p1"))
  writer.write_scalars(3, {"train/loss": 1.5})
  writer.close()
  assert os.listdir(tmp_path / "p1") == []  # one process writes TensorBoard files


class _Recorder:
  """A metric writer that records what reaches it, in order."""

  def __init__(self):
    self.calls = []

  def write_scalars(self, step, scalars):
    self.calls.append(("scalars", step, scalars))

  def write_images(self, step, images):
    self.calls.append(("images", step, images))

  def write_hparams(self, hparams):
    self.calls.append(("hparams", hparams))

  def flush(self):
    self.calls.append(("flush",))

  def close(self):
    self.calls.append(("close",))


def test_committed_writer_holds_points_until_their_step_is_committed():
  inner = _Recorder()
  writer = train_utils.CommittedWriter(inner)
  writer.write_hparams({"lr": 0.1})
  loss = {"train/loss": 2.0}
  writer.write_scalars(1, loss)
  writer.write_images(2, {"views": "img2"})
  writer.write_scalars(2, {"train/loss": 1.0})
  writer.write_scalars(3, {"train/loss": 0.5})
  loss["train/loss"] = 99.0  # the caller reuses its dict: the pending point is a copy
  assert inner.calls == []  # nothing before a checkpoint covers it
  writer.commit(upto=2)  # the checkpoint of step 2 is on disk
  assert inner.calls == [("hparams", {"lr": 0.1}), ("scalars", 1, {"train/loss": 2.0}),
                         ("images", 2, {"views": "img2"}), ("scalars", 2, {"train/loss": 1.0}),
                         ("flush",)]
  inner.calls.clear()
  writer.commit(upto=2)  # nothing new: no write, no flush
  assert inner.calls == []
  writer.commit()  # the end of the run: everything left
  assert inner.calls == [("scalars", 3, {"train/loss": 0.5}), ("flush",)]


def test_committed_writer_discard_drops_what_no_checkpoint_covers():
  """A failed run: the steps after its last checkpoint are recomputed by the resume, so their
  points must not be written now (TensorBoard would see those steps twice)."""
  inner = _Recorder()
  writer = train_utils.CommittedWriter(inner)
  writer.write_scalars(4, {"a": 1.0})
  writer.write_scalars(5, {"a": 2.0})
  writer.commit(upto=4)
  writer.discard()
  writer.commit()
  assert inner.calls == [("scalars", 4, {"a": 1.0}), ("flush",)]
  writer.flush()
  writer.close()
  assert inner.calls[-2:] == [("flush",), ("close",)]


# ----------------------------------------------------------------------------- progress
class _Scalars:
  def __init__(self):
    self.points = {}

  def write_scalars(self, step, scalars):
    self.points.setdefault(step, {}).update(scalars)


def test_progress_reports_every_n_steps_and_at_the_last_with_hours_in_the_eta():
  stream, writer = io.StringIO(), _Scalars()
  progress = train_utils.Progress(10000, 4, writer=writer, every_steps=1000, stream=stream)
  progress._t0 = 0.0
  progress.metrics = {"loss": 1.23456789, "accuracy": 0.5}
  triggered = [step for step in range(1, 2001) if progress(step, t=10.0 + 0.5 * (step - 1))]
  assert triggered == [1000, 2000]  # clu's cadence; the first call only starts the clock
  lines = stream.getvalue().splitlines()
  assert len(lines) == 3, lines
  assert lines[0] == ("[train] step 1/10000 (0.0%) | first step (compilation included) after "
                      "10.0 s | accuracy=0.5 loss=1.235 | ETA from the next report")
  # 2 steps/s over the interval; 9000 steps left -> 4500 s.
  assert lines[1] == ("[train] step 1000/10000 (10.0%) | 2.00 steps/s, 8.0 videos/s | "
                      "accuracy=0.5 loss=1.235 | ETA 1h15m00s")
  assert lines[2].endswith("| ETA 1h06m40s") and progress.line == lines[2]
  assert writer.points == {1000: {"train/steps_per_sec": 2.0, "train/videos_per_sec": 8.0},
                           2000: {"train/steps_per_sec": 2.0, "train/videos_per_sec": 8.0}}
  # The last step is reported whatever the cadence.
  stream = io.StringIO()
  progress = train_utils.Progress(25, 2, every_steps=10, stream=stream, name="eval")
  for step in range(1, 26):
    progress(step, t=float(step))
  lines = stream.getvalue().splitlines()
  assert [line.split(" | ")[0] for line in lines] == [
      "[eval] step 1/25 (4.0%)", "[eval] step 10/25 (40.0%)", "[eval] step 20/25 (80.0%)",
      "[eval] step 25/25 (100.0%)"]
  assert lines[-1] == "[eval] step 25/25 (100.0%) | 1.00 steps/s, 2.0 videos/s | ETA 0m00s"


def test_progress_prints_on_process_0_only(capsys, monkeypatch):
  """Other processes keep the line (and the writer its points) but print nothing."""
  writer = _Scalars()
  progress = train_utils.Progress(4, 8, writer=writer, every_steps=2)  # stream: stdout
  progress(1, t=0.0)
  progress(2, t=0.5)
  assert capsys.readouterr().out.splitlines()[1] == (
      "[train] step 2/4 (50.0%) | 2.00 steps/s, 16.0 videos/s | ETA 0m01s")
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  progress(3, t=1.0)
  progress(4, t=1.5)
  assert capsys.readouterr().out == ""
  assert progress.line.startswith("[train] step 4/4 (100.0%) | 2.00 steps/s")
  assert writer.points[4] == {"train/steps_per_sec": 2.0, "train/videos_per_sec": 16.0}


# ----------------------------------------------------------------------------- sync
def test_sync_processes_is_a_barrier_of_every_process_and_a_no_op_alone(monkeypatch):
  calls = []
  monkeypatch.setattr(train_utils.ocp.multihost, "sync_global_processes",
                      lambda name, **kw: calls.append((name, kw)))
  train_utils.sync_processes("reskd-alone")
  assert calls == []  # one process: no coordination service to ask
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  train_utils.sync_processes("reskd-train-loop", timeout_s=60)
  assert calls == [("reskd-train-loop", {"timeout": 60, "processes": {0, 1, 2}})]


# ----------------------------------------------------------------------------- stop latch
@pytest.fixture
def latch_state(monkeypatch):
  """The latch as in a fresh process; a harmless handler in front of every signal the tests
  send (so a latch that does not catch one fails the test instead of ending pytest); the
  process's own handlers put back afterwards, whatever happened."""
  monkeypatch.setattr(train_utils, "_received", None)
  monkeypatch.setattr(train_utils, "_installed", 0)
  monkeypatch.setattr(train_utils, "_loop_over", False)
  # Named here, not taken from STOP_SIGNALS: one dropped from there must fail a test, not
  # end pytest.
  sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
  before = {sig: signal.getsignal(sig) for sig in sigs}
  caught = []

  def fallback(signum, frame):
    del frame
    caught.append(signum)

  try:
    for sig in sigs:
      signal.signal(sig, fallback)
    yield caught, fallback
  finally:
    for sig, handler in before.items():
      signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _send(sig, caught):
  """Sends ``sig`` to this process and waits until a Python handler has run for it."""
  seen = len(caught)
  os.kill(os.getpid(), sig)
  deadline = time.monotonic() + 5.0
  while (train_utils._received != sig and len(caught) == seen
         and time.monotonic() < deadline):
    time.sleep(0.005)


def test_stop_signals_are_term_int_and_hup():
  """SIGHUP (a closed terminal or ssh session) stops like SIGTERM: save, then exit 143."""
  assert train_utils.STOP_SIGNALS == (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@pytest.mark.parametrize("sig", train_utils.STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_stop_signal_latches_each_stop_signal_and_restores_the_handlers(sig, latch_state,
                                                                       capsys):
  caught, fallback = latch_state
  with train_utils.StopSignal() as stop:
    assert all(signal.getsignal(s) is train_utils._handle_signal
               for s in train_utils.STOP_SIGNALS)
    assert stop.received is None and stop.should_stop() is False
    _send(sig, caught)
    assert caught == []  # the latch, not the handler before it, got the signal
    assert stop.received == sig and stop.should_stop() is True
    _send(signal.SIGTERM, caught)  # a second signal (kill after Ctrl-C): said only once
  assert capsys.readouterr().out == (
      f"received {signal.Signals(sig).name}: saving a checkpoint and stopping\n")
  assert all(signal.getsignal(s) is fallback for s in train_utils.STOP_SIGNALS)
  # Left: the handler before it gets the next one; nothing new is latched.
  _send(signal.SIGHUP, caught)
  assert caught == [signal.SIGHUP] and train_utils._received == signal.SIGTERM


def test_stop_signal_ignores_other_signals(latch_state):
  caught, _ = latch_state
  with train_utils.StopSignal() as stop:
    _send(signal.SIGUSR1, caught)
    assert caught == [signal.SIGUSR1]
    assert stop.received is None and stop.should_stop() is False


def test_outer_latch_keeps_a_signal_of_start_up_for_the_loop(latch_state, capsys):
  """main.py holds an outer StopSignal from start-up on: a signal caught before the loop
  (or remembered and handed over with `latch`) stops the loop's inner one at once, and one
  after the loop is over says the run is finishing instead of promising a checkpoint."""
  caught, fallback = latch_state
  outer = train_utils.StopSignal().__enter__()
  try:
    train_utils.latch(signal.SIGINT)  # came before the handlers existed
    assert capsys.readouterr().out == "received SIGINT: saving a checkpoint and stopping\n"
    with train_utils.StopSignal() as inner:  # an inner enter must not forget it
      assert inner.should_stop() is True and inner.received == signal.SIGINT
    assert outer.received == signal.SIGINT
  finally:
    outer.__exit__(None, None, None)
  assert train_utils._installed == 0
  # Anew: a fresh outermost context forgets the old signal.
  with train_utils.StopSignal() as outer:
    assert outer.received is None
    with train_utils.StopSignal():
      pass
    _send(signal.SIGTERM, caught)
  assert capsys.readouterr().out == "received SIGTERM: the run is already finishing\n"
  assert caught == [] and signal.getsignal(signal.SIGTERM) is fallback


def test_stop_signal_outside_the_main_thread_does_not_raise(latch_state):
  """Python installs handlers from the main thread only; elsewhere the latch still works
  (set by the main thread's handlers) and nothing is installed or raised."""
  caught, fallback = latch_state
  errors, seen = [], []

  def body():
    try:
      with train_utils.StopSignal() as stop:
        seen.append(signal.getsignal(signal.SIGTERM))
        train_utils.latch(signal.SIGTERM)
        seen.append(stop.should_stop())
    except Exception as e:  # noqa: BLE001  (the test reports it)
      errors.append(e)

  thread = threading.Thread(target=body)
  thread.start()
  thread.join(10)
  assert errors == [] and seen == [fallback, True]
  assert signal.getsignal(signal.SIGTERM) is fallback


def _mesh():
  return jax.sharding.Mesh(np.array(jax.devices()), ("data",))


def test_one_process_decides_at_once_even_with_a_mesh(latch_state):
  """With one process there is nobody to agree with: no reduction and no one-call delay."""
  with train_utils.StopSignal(_mesh()) as stop:
    assert stop._reduce is None
    assert stop.should_stop() is False
    train_utils.latch(signal.SIGTERM)
    assert stop.should_stop() is True


def test_several_processes_agree_one_call_later(latch_state, monkeypatch):
  """The multi-process path on this one process (the reduction over its 8 devices): call k
  returns the reduced flags of call k - 1, so every process stops after the same step. A
  result of the current call (a host wait each step, or processes disagreeing when the
  signal lands between their calls) or of an older one breaks the expected sequence."""
  with monkeypatch.context() as m:
    m.setattr(jax, "process_count", lambda: 2)
    stop = train_utils.StopSignal(_mesh())
  assert stop._reduce is not None
  with stop:
    assert stop.should_stop() is False  # call 1: nothing reduced yet
    assert stop.should_stop() is False  # call 2: call 1's flags, none set
    train_utils.latch(signal.SIGTERM)
    assert stop.should_stop() is False  # call 3: call 2's flags, from before the signal
    assert stop.should_stop() is True  # call 4: call 3 saw it
    assert stop.should_stop() is True  # and it stays
