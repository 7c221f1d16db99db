"""Checkpoints on disk, both kinds: deployable variables and resumable train states.

*Variables directories* (``save_variables`` / ``load_variables``) hold a
model's ``{"params", "batch_stats"}``: what ``python -m reskd_jax.tools.convert_weights``
writes and what the trainer writes for its final and best student
(``<workdir>/variables``, ``<workdir>/best_variables``)::

    DIR/meta.json     see ``reskd_jax.meta``
    DIR/orbax/        an orbax StandardCheckpointer checkpoint of the variables
    DIR/*.json        optional extra files written with it (e.g. ``best.json``)

:func:`load_variables` accepts such a directory, or a training workdir that
holds one in ``variables/``. :func:`merge_pretrained` puts loaded (e.g.
ImageNet) weights into freshly initialised variables, keeping the classifier
from the initialisation.

*Train checkpoints* (:class:`TrainCheckpoints`) are the full train state
(step, params, batch statistics, optimiser state) in ``<workdir>/checkpoints``,
saved asynchronously by an orbax manager. Beside them, ``checksums.json``
holds a SHA-256 of every saved state, taken from the arrays at save time;
:meth:`TrainCheckpoints.restore` takes the newest checkpoint that restores
completely, matches its checksum and is finite, warns about each newer one it
skips (and moves it to ``<workdir>/checkpoints_unusable``), and raises a
one-line ``CheckpointError`` when none is usable.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import shutil
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from reskd_jax import fileio, meta as meta_lib, models, train_utils, workdir as workdir_lib
from reskd_jax.errors import CheckpointError

ORBAX_DIR = "orbax"
CHECKSUMS_FILE = "checksums.json"
UNUSABLE_DIR = "checkpoints_unusable"
COLLECTIONS = ("params", "batch_stats")


def _jsonable(value):
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (np.floating,)):
    return float(value)
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  return str(value)


def _to_plain_dict(tree):
  """Unfreezes FrozenDicts / mappings into nested dicts."""
  if isinstance(tree, Mapping):
    return {k: _to_plain_dict(v) for k, v in tree.items()}
  return tree


def this_process_only() -> ocp.options.MultiprocessingOptions:
  """Orbax options for a checkpoint this process reads or writes alone, with no barrier.

  Variables directories are small and replicated (every host holds all of
  them): process 0 writes them while the others go on training, and every
  process reads them by itself. Orbax's default would wait for all processes.
  """
  index = jax.process_index()
  return ocp.options.MultiprocessingOptions(primary_host=index, active_processes={index})


def save_variables(path: str, variables: Mapping[str, Any],
                   metadata: Optional[Mapping[str, Any]] = None,
                   extra_json: Optional[Mapping[str, Any]] = None) -> str:
  """Writes ``variables`` (``params`` and ``batch_stats``) and ``meta.json`` to ``path``.

  An existing variables directory at ``path`` is replaced: the new one is
  written beside it and swapped into place (:func:`fileio.atomic_path`), so a
  crash leaves the old one intact, and every file of ``extra_json`` (name -> payload, e.g.
  ``{"best.json": ...}``) changes together with the variables. Arrays are
  fetched to host memory first. Returns the absolute path.
  """
  path = os.path.abspath(os.fspath(path))
  variables = _to_plain_dict(variables)
  missing = [c for c in ("params",) if c not in variables]
  if missing:
    raise ValueError(f"save_variables: variables have no {missing} collection "
                     f"(got {sorted(variables)})")
  tree = {c: variables[c] for c in COLLECTIONS if c in variables}
  tree.setdefault("batch_stats", {})
  tree = jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)

  try:
    with fileio.atomic_path(path) as tmp:
      os.makedirs(tmp)
      with ocp.StandardCheckpointer(multiprocessing_options=this_process_only()) as ckptr:
        ckptr.save(os.path.join(tmp, ORBAX_DIR), tree)
        ckptr.wait_until_finished()
      meta = dict(_jsonable(dict(metadata or {})))
      meta.setdefault("saved_at", time.strftime("%Y-%m-%dT%H:%M:%S"))
      meta["num_parameters"] = int(sum(np.size(x)
                                       for x in jax.tree_util.tree_leaves(tree["params"])))
      fileio.write_json_atomic(os.path.join(tmp, meta_lib.FILE), meta)
      for name, payload in (extra_json or {}).items():
        fileio.write_json_atomic(os.path.join(tmp, name), _jsonable(payload))
  except Exception as e:  # noqa: BLE001 (disk full, file-size limit, unwritable directory)
    kept = " (the previous one is kept)" if os.path.exists(path) else ""
    raise CheckpointError(f"could not save variables to {path}: {_root_cause(e)}{kept}. "
                          f"Free space or fix the directory, then rerun the same command "
                          f"to resume") from None
  return path


def resolve_variables_dir(path: str) -> str:
  """The variables directory for ``path``: ``path`` itself or ``path/variables``."""
  path = os.fspath(path)
  fileio.recover(path)
  fileio.recover(os.path.join(path, workdir_lib.VARIABLES))
  if not os.path.exists(path):
    raise FileNotFoundError(f"no such checkpoint directory: {path!r}")
  if os.path.isdir(os.path.join(path, ORBAX_DIR)):
    return path
  sub = os.path.join(path, workdir_lib.VARIABLES)
  if os.path.isdir(os.path.join(sub, ORBAX_DIR)):
    return sub
  if os.path.isfile(path) and path.endswith((".pth", ".pt", ".pkl")):
    raise FileNotFoundError(
        f"{path!r} is a PyTorch file; convert it first: python -m reskd_jax.tools.convert_weights "
        f"--format=torchvision|mmaction --arch=... --input={path} --output=DIR")
  best = os.path.join(path, "best_variables")
  if os.path.isdir(os.path.join(best, ORBAX_DIR)):
    raise FileNotFoundError(
        f"{path!r} has no final variables/ yet (the run has not finished); its best model so "
        f"far is {best!r}: pass that path instead")
  raise FileNotFoundError(
      f"{path!r} holds no saved variables: expected {os.path.join(path, ORBAX_DIR)!r} "
      f"(a directory written by reskd_jax.tools.convert_weights / save_variables) or "
      f"{os.path.join(sub, ORBAX_DIR)!r} (a training workdir)")


def load_variables(path: str) -> Dict[str, Any]:
  """Loads ``{"params", "batch_stats"}`` as numpy arrays (host memory)."""
  directory = os.path.abspath(resolve_variables_dir(path))
  with ocp.StandardCheckpointer(multiprocessing_options=this_process_only()) as ckptr:
    restored = ckptr.restore(os.path.join(directory, ORBAX_DIR))
  restored = _to_plain_dict(restored)
  out = {c: restored.get(c, {}) for c in COLLECTIONS}
  return jax.tree_util.tree_map(np.asarray, out)


def load_metadata(path: str) -> Dict[str, Any]:
  """The ``meta.json`` of a variables directory (or of ``workdir/variables``)."""
  directory = resolve_variables_dir(path)
  meta_path = os.path.join(directory, meta_lib.FILE)
  if not os.path.exists(meta_path):
    return {}
  with open(meta_path) as f:
    return json.load(f)


def _flatten(tree, prefix=()):
  out = {}
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      out.update(_flatten(v, prefix + (str(k),)))
  else:
    out[prefix] = tree
  return out


def _unflatten(flat):
  out: Dict[str, Any] = {}
  for key, value in flat.items():
    node = out
    for k in key[:-1]:
      node = node.setdefault(k, {})
    node[key[-1]] = value
  return out


def _is_head(key) -> bool:
  # (collection, head, ...): the classifier, the same module in every family.
  return len(key) > 1 and key[1] == models.HEAD_NAME


def _fmt(keys, limit=20):
  keys = sorted("/".join(k) for k in keys)
  text = ", ".join(keys[:limit])
  if len(keys) > limit:
    text += f", ... ({len(keys) - limit} more)"
  return text


def merge_pretrained(init_variables: Mapping[str, Any], loaded: Mapping[str, Any],
                     skip_head: bool = True) -> Dict[str, Any]:
  """Backbone (and, unless ``skip_head``, classifier) from ``loaded``, the rest from init.

  With ``skip_head=True`` (ImageNet initialisation for a new label set) the
  ``fc`` entries come from ``init_variables`` and any ``fc`` in ``loaded`` is
  ignored. Every other entry of ``init_variables`` must exist in ``loaded``
  with the same shape, and ``loaded`` must have nothing more; otherwise a
  ``ValueError`` lists the missing, unexpected and mismatched entries.
  Collections other than ``params``/``batch_stats`` in init are kept as they are.
  Loaded arrays are cast to the init dtype.
  """
  init = _to_plain_dict(init_variables)
  loaded = _to_plain_dict(loaded)
  result = {}
  missing, unexpected, mismatched = [], [], []
  for coll in COLLECTIONS:
    if coll not in init:
      continue
    init_flat = _flatten(init[coll], (coll,))
    load_flat = _flatten(loaded.get(coll, {}), (coll,))
    merged = {}
    for key, value in init_flat.items():
      if skip_head and _is_head(key):
        merged[key] = value
        continue
      if key not in load_flat:
        missing.append(key)
        continue
      new = load_flat[key]
      if tuple(np.shape(new)) != tuple(np.shape(value)):
        mismatched.append(f"{'/'.join(key)}: checkpoint {tuple(np.shape(new))}, "
                          f"model {tuple(np.shape(value))}")
        continue
      dtype = getattr(value, "dtype", None)
      merged[key] = np.asarray(new, dtype=dtype) if dtype is not None else np.asarray(new)
    for key in load_flat:
      if key not in init_flat and not (skip_head and _is_head(key)):
        unexpected.append(key)
    result[coll] = _unflatten(merged).get(coll, {})
  if missing or unexpected or mismatched:
    parts = ["pretrained variables do not fit the model:"]
    if missing:
      parts.append(f"  missing in checkpoint ({len(missing)}): {_fmt(missing)}")
    if unexpected:
      parts.append(f"  unexpected in checkpoint ({len(unexpected)}): {_fmt(unexpected)}")
    if mismatched:
      more = f", ... ({len(mismatched) - 20} more)" if len(mismatched) > 20 else ""
      parts.append(f"  shape mismatch ({len(mismatched)}): " + "; ".join(mismatched[:20]) + more)
    parts.append("  (is the checkpoint for the same architecture / depth / width?)")
    raise ValueError("\n".join(parts))
  for coll, value in init.items():
    if coll not in result:
      result[coll] = value
  return result


# ---------------------------------------------------------------------------
# Resumable train states.


def _host_leaf(x) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = x.addressable_data(0)  # replicated: every shard is a full copy
  return np.asarray(jax.device_get(x))


def state_digest(state) -> str:
  """SHA-256 over every leaf of ``state`` (path, dtype, shape, bytes)."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    arr = np.ascontiguousarray(_host_leaf(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{arr.dtype.str}|{arr.shape}".encode())
    h.update(arr.tobytes())
  return h.hexdigest()


def first_non_finite(tree) -> Optional[str]:
  """The path of the first floating leaf holding a NaN or inf, or None."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    arr = _host_leaf(leaf)
    if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
      return jax.tree_util.keystr(path)
  return None


def _finalized(step_dir: str) -> bool:
  """Whether orbax finished writing ``step_dir`` (its commit marker is there)."""
  return os.path.exists(os.path.join(step_dir, "_CHECKPOINT_METADATA"))


def _root_cause(error: BaseException) -> str:
  """The innermost OSError of ``error`` (its strerror and file), else its first line."""
  seen, e, found = set(), error, None
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.strerror:
      found = e
    e = e.__cause__ or e.__context__
  if found is not None:
    where = f": {found.filename}" if found.filename else ""
    return f"{found.strerror}{where}"
  # tensorstore (orbax's array writer) reports the OS error inside its message.
  text = str(error)
  os_error = re.search(r": ([^:\[\]\n]+?) \[os_error_code='?(\d+)'?\]", text)
  if os_error:
    paths = re.findall(r'"(/[^"]+)"', text[:os_error.start()])
    return f"{os_error.group(1)} (errno {os_error.group(2)})" + (f": {paths[-1]}" if paths else "")
  return _first_line(error)


def _first_line(e: BaseException, limit: int = 160) -> str:
  text = (str(e).strip().splitlines() or [""])[0] or type(e).__name__
  return text if len(text) <= limit else text[:limit] + "..."


class TrainCheckpoints:
  """The last ``keep`` train states in ``<workdir>/checkpoints`` (asynchronous orbax saves)."""

  def __init__(self, workdir: str, keep: int):
    if keep < 1:
      raise CheckpointError(f"config.keep_checkpoints={keep}: must be at least 1")
    workdir = os.path.abspath(workdir)
    self.workdir = workdir
    self.directory = os.path.join(workdir, workdir_lib.CHECKPOINTS)
    self._keep = keep
    self._in_flight: Optional[int] = None
    self._checksums_warned = False
    self._manager = self._new_manager()

  def _new_manager(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=self._keep, create=True,
                                           enable_async_checkpointing=True)
    return ocp.CheckpointManager(self.directory, options=options)

  # -- checksums -----------------------------------------------------------
  def _checksums_path(self) -> str:
    return os.path.join(self.directory, CHECKSUMS_FILE)

  def _read_checksums(self) -> Dict[str, str]:
    try:
      return dict(fileio.read_json(self._checksums_path(), default={}) or {})
    except ValueError:
      if not self._checksums_warned:  # once, not at every save
        self._checksums_warned = True
        train_utils.warn(f"{self._checksums_path()} is not valid JSON; checkpoints are "
                         f"verified by finiteness only (it is rewritten at the next save)")
      return {}

  def _record_checksum(self, step: int, digest: str) -> None:
    if jax.process_index() != 0:
      return
    sums = self._read_checksums()
    keep = ({str(s) for s in self._manager.all_steps()} | {str(s) for s in self._steps_on_disk()}
            | {str(step)})
    sums = {k: v for k, v in sums.items() if k in keep}
    sums[str(step)] = digest
    fileio.write_json_atomic(self._checksums_path(), sums)

  # -- save / restore --------------------------------------------------------
  def save(self, step: int, state, force: bool = False) -> None:
    """Starts saving ``state`` as ``step``; its checksum is recorded first.

    Returns once the previous save is on disk. A save that fails (disk full,
    file-size limit, unwritable directory) is a one-line ``CheckpointError``
    naming the path and the cause, raised here or by :meth:`wait_until_finished`;
    its half-written files and its checksum are removed first, so the
    checkpoints before it and ``checksums.json`` stay intact and consistent.
    """
    digest = state_digest(state)
    self.wait_until_finished()  # the previous save's failure is reported as its own
    try:
      self._record_checksum(step, digest)
      self._in_flight = step
      self._manager.save(step, args=ocp.args.StandardSave(state), force=force)
    except Exception as e:  # noqa: BLE001 (any failure of the save: reported in one line)
      raise self._save_failed(step, e) from None

  def _save_failed(self, step: int, error: BaseException) -> CheckpointError:
    """Cleans up after a failed save of ``step``; the one-line error to raise."""
    self._in_flight = None
    cause = _root_cause(error)
    if jax.process_index() == 0:
      for tmp in glob.glob(os.path.join(self.directory, "*.orbax-checkpoint-tmp*")):
        shutil.rmtree(tmp, ignore_errors=True)
      step_dir = os.path.join(self.directory, str(step))
      if os.path.isdir(step_dir) and not _finalized(step_dir):
        shutil.rmtree(step_dir, ignore_errors=True)
      try:
        self._drop_checksums_without_checkpoint()
      except OSError:
        pass
    kept = sorted(s for s in self._steps_on_disk() if s != step)
    have = (f"the checkpoints before it are intact (steps {', '.join(map(str, kept))})"
            if kept else "no earlier checkpoint exists")
    return CheckpointError(
        f"could not save checkpoint step {step} in {self.directory}: {cause}; {have}. Free "
        f"space or fix the directory, then rerun the same command to resume")

  def _steps_on_disk(self) -> List[int]:
    if not os.path.isdir(self.directory):
      return []
    return [int(d) for d in os.listdir(self.directory)
            if d.isdigit() and _finalized(os.path.join(self.directory, d))]

  def _drop_checksums_without_checkpoint(self) -> None:
    sums = self._read_checksums()
    on_disk = {str(s) for s in self._steps_on_disk()}
    kept = {k: v for k, v in sums.items() if k in on_disk}
    if kept != sums:
      fileio.write_json_atomic(self._checksums_path(), kept)

  def _verify(self, step: int, restored, sums: Mapping[str, str]) -> Optional[str]:
    bad = first_non_finite(restored)
    if bad is not None:
      return f"non-finite values in {bad}"
    want = sums.get(str(step))
    if want is not None and state_digest(restored) != want:
      return f"checksum mismatch (the files changed after saving; see {CHECKSUMS_FILE})"
    return None

  def restore(self, abstract_state) -> Optional[Tuple[Any, int]]:
    """``(state, step)`` of the newest usable checkpoint; None when there is none at all.

    Each newer, unusable one is named in a warning and moved to
    ``<workdir>/checkpoints_unusable``.
    """
    self._manager.reload()
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return None
    sums = self._read_checksums()
    skipped: List[Tuple[int, str]] = []
    for step in steps:
      try:
        restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
      except Exception as e:  # noqa: BLE001 (any failure means: not this one)
        reason = f"does not restore: {_first_line(e)}"
      else:
        reason = self._verify(step, restored, sums)
        if reason is None:
          # Out of the way: a rerun would meet them again, and a later save of
          # the same step number would collide with them.
          self._set_aside([s for s, _ in skipped])
          logging.info("resuming from %s step %d", self.directory, step)
          return restored, step
      skipped.append((step, reason))
      train_utils.warn(f"checkpoint step {step} in {self.directory} is unusable ({reason}); "
                       f"trying an older one")
      self._manager.close()  # a failed restore can leave the manager confused
      self._manager = self._new_manager()
    raise CheckpointError(
        f"none of the {len(steps)} checkpoints in {self.directory} is usable (newest: step "
        f"{skipped[0][0]}, {skipped[0][1]}); move that directory aside to start from scratch")

  def _set_aside(self, steps: List[int]) -> None:
    """Moves unusable step directories out of the manager's way (kept for inspection)."""
    if not steps:
      return
    if jax.process_index() == 0:
      dest = os.path.join(self.workdir, UNUSABLE_DIR)
      os.makedirs(dest, exist_ok=True)
      for step in steps:
        src = os.path.join(self.directory, str(step))
        if os.path.exists(src):
          target = os.path.join(dest, f"{step}-{int(time.time())}")
          os.rename(src, target)
          train_utils.warn(f"moved unusable checkpoint step {step} to {target}")
    sync = getattr(train_utils, "sync_processes", None)
    if sync is not None and jax.process_count() > 1:
      sync(f"reskd-set-aside-{'-'.join(map(str, steps))}")
    self._manager.close()
    self._manager = self._new_manager()

  def settle(self) -> None:
    """Waits for the save in flight when the run stops for another reason: a failed save is
    cleaned up as in :meth:`wait_until_finished`, but the first error is the one reported."""
    try:
      self.wait_until_finished()
    except CheckpointError:
      pass

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> List[int]:
    return list(self._manager.all_steps())

  def wait_until_finished(self) -> None:
    """Waits for the save in flight; its failure is a one-line ``CheckpointError``."""
    try:
      self._manager.wait_until_finished()
      error = None
      check = getattr(self._manager, "check_for_errors", None)
      if check is not None:
        check()
    except Exception as e:  # noqa: BLE001
      error = e
    step, self._in_flight = self._in_flight, None
    if error is None:
      # orbax removed the checkpoints beyond ``keep`` once this one was complete: their
      # checksums go too, or the last save of a run (final, or at a signal) would leave
      # checksums.json listing a checkpoint that is gone.
      if jax.process_index() == 0:
        try:
          self._drop_checksums_without_checkpoint()
        except OSError as e:
          train_utils.warn(f"could not update {self._checksums_path()} ({_root_cause(e)})")
      return
    if step is not None and _finalized(os.path.join(self.directory, str(step))):
      # The new checkpoint is complete; removing an older one failed (e.g. read-only).
      train_utils.warn(f"checkpoint step {step} is saved, but an older checkpoint in "
                       f"{self.directory} could not be removed ({_root_cause(error)})")
      return
    raise self._save_failed(step if step is not None else (self._manager.latest_step() or 0),
                            error) from None

  def close(self) -> None:
    self._manager.close()


def create_train_checkpoint_manager(workdir: str, keep: int) -> TrainCheckpoints:
  return TrainCheckpoints(workdir, keep)


def save_train_state(manager: TrainCheckpoints, step: int, state, force: bool = False) -> None:
  manager.save(step, state, force=force)


def restore_train_state(manager: TrainCheckpoints, abstract_state) -> Any:
  """The newest usable train state, or None when the workdir has no checkpoint."""
  restored = manager.restore(abstract_state)
  return None if restored is None else restored[0]


# Older names (train_utils held the train-state checkpoints before).
create_checkpoint_manager = create_train_checkpoint_manager
save_state = save_train_state
restore_latest = restore_train_state
