"""Evaluation: metrics (pure NumPy), the multi-view loop and the `Evaluator`.

Trimmed data sets report top-1 / top-5 and mean class accuracy; multi-label
ones (ActivityNet, FCVID) mean average precision: per-class AP over the
whole split, classes without a positive left out, then the mean (the
definition of scikit-learn's ``average_precision_score``).

Multi-host: every host evaluates its own videos (the eval pipeline shards the
split by example, host ``h`` reading videos ``h, h + H, ...``), keeps only its
own rows of the sharded predictions (never fetching another host's), and one
``process_allgather`` at the end gives every host the predictions of the
whole split in the single-host order. Every video is counted once and every
host computes the same metrics.
"""

from __future__ import annotations

import time
from typing import Dict, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from jax.experimental import multihost_utils

from reskd_jax import models, train_step
from reskd_jax.data import pipeline, transfer
from reskd_jax.errors import DataError


def topk_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
  k = min(k, probs.shape[-1])
  topk = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
  return float(np.mean(np.any(topk == labels[:, None], axis=-1)))


def mean_class_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
  """Mean over the classes present in ``labels`` of their top-1 recall."""
  pred = np.argmax(probs, axis=-1)
  recalls = [np.mean(pred[labels == c] == c) for c in np.unique(labels)]
  return float(np.mean(recalls))


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
  """AP of one class: sum over positives of precision at its rank / #positives.

  Equals sklearn's ``average_precision_score`` (step-wise, no interpolation),
  ties resolved the way sklearn does (thresholds at distinct scores).
  """
  order = np.argsort(-scores, kind="stable")
  scores, targets = scores[order], targets[order].astype(np.float64)
  # Group equal scores: precision/recall are evaluated at distinct thresholds.
  distinct = np.where(np.diff(scores))[0]
  ends = np.r_[distinct, targets.size - 1]
  tp = np.cumsum(targets)[ends]
  fp = (ends + 1) - tp
  precision = tp / (tp + fp)
  recall = tp / tp[-1]
  recall_steps = np.diff(np.r_[0.0, recall])
  return float(np.sum(recall_steps * precision))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
  """mAP over classes with at least one positive. ``targets`` many-hot (N, K)."""
  aps = [average_precision(scores[:, k], targets[:, k])
         for k in range(targets.shape[1]) if targets[:, k].any()]
  if not aps:
    raise ValueError("mean_average_precision: no class has a positive example")
  return float(np.mean(aps))


def compute_metrics(probs: np.ndarray, labels: np.ndarray,
                    multilabel: Optional[np.ndarray] = None) -> Dict[str, float]:
  metrics = {
      "top1": topk_accuracy(probs, labels, 1),
      "top5": topk_accuracy(probs, labels, 5),
      "mean_class_accuracy": mean_class_accuracy(probs, labels),
      # Cross-entropy of the (view-averaged) predicted probabilities of the labels.
      "loss": float(-np.mean(np.log(np.maximum(
          probs[np.arange(labels.shape[0]), labels.astype(np.int64)], 1e-12)))),
      "num_videos": int(labels.shape[0]),
  }
  if multilabel is not None:
    metrics["mAP"] = mean_average_precision(probs, multilabel)
  return metrics


def _local_rows(out: jax.Array) -> np.ndarray:
  """This host's rows of ``out`` (sharded on its leading axis), in its local batch's order."""
  if out.is_fully_addressable:
    return np.asarray(jax.device_get(out))
  shards = {}
  for shard in out.addressable_shards:  # one per local device; no other host's data
    shards.setdefault(shard.index[0].start or 0, shard.data)
  return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])


def _gather_hosts(local: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """Every host's rows, interleaved back into the split's order (host h holds h, h+H, ...)."""
  if jax.process_count() == 1:
    return local
  stacked = multihost_utils.process_allgather(local)  # leaves (H, n, ...), same n on every host
  return {k: np.swapaxes(v, 0, 1).reshape((-1,) + v.shape[2:]) for k, v in stacked.items()}


def predict(eval_fn, variables, batches: Iterable, put_batch, max_batches: int = -1,
            split: str = "eval", expected_videos: Optional[int] = None):
  """Runs ``eval_fn`` over ``batches``; returns (probs, labels, multilabel) of real videos.

  ``put_batch`` places a host batch on the mesh; padding (``mask == 0``) is
  dropped. With several hosts each passes its own batches and all get the
  predictions of the whole split. ``expected_videos`` (the manifest's count,
  checked on a full pass): any other number of real videos is a DataError.
  """
  rows = {"probs": [], "label": [], "mask": [], "multilabel": []}
  failure = ""
  batches = iter(batches)
  while max_batches < 0 or len(rows["probs"]) < max_batches:
    try:
      batch = next(batches)
    except StopIteration:
      break
    except tf.errors.OpError as e:  # a damaged shard, or more videos than the manifest
      failure = e.message.splitlines()[0] if e.message else type(e).__name__
      break
    out = _local_rows(eval_fn(variables, put_batch({"video": batch["video"]})))
    rows["probs"].append(out)
    rows["label"].append(np.asarray(batch["label"]))
    rows["mask"].append(np.asarray(batch.get("mask", np.ones(out.shape[0])), np.float32))
    if "multilabel" in batch:
      rows["multilabel"].append(np.asarray(batch["multilabel"]))
  local = {k: np.concatenate(v) for k, v in rows.items() if v}
  if jax.process_count() > 1:
    # Hosts agree on failures too, so that none waits for another in the gather.
    status = multihost_utils.process_allgather(np.int32(bool(failure)))
    if status.any():
      raise DataError(f"split {split!r}: evaluation failed on host(s) "
                      f"{np.flatnonzero(status).tolist()}: {failure or 'see that host log'}")
  elif failure:
    raise DataError(f"split {split!r}: {failure}")
  if not local:
    raise DataError(f"split {split!r}: evaluation saw no videos: is the eval split empty?")
  merged = _gather_hosts(local)
  real = merged["mask"] > 0
  if expected_videos is not None and max_batches < 0 and int(real.sum()) != expected_videos:
    raise DataError(f"split {split!r}: evaluation saw {int(real.sum())} videos but the "
                    f"manifest says {expected_videos}; a shard was changed or damaged after "
                    f"conversion (re-run data_prep)")
  if not real.any():
    raise DataError(f"split {split!r}: evaluation saw no videos: is the eval split empty?")
  return (merged["probs"][real], merged["label"][real],
          merged["multilabel"][real] if "multilabel" in merged else None)


def evaluate(eval_fn, variables, batches, put_batch, multi_label: bool,
             max_batches: int = -1, split: str = "eval",
             expected_videos: Optional[int] = None) -> Dict[str, float]:
  start = time.time()
  probs, labels, multi = predict(eval_fn, variables, batches, put_batch, max_batches,
                                 split=split, expected_videos=expected_videos)
  metrics = compute_metrics(probs, labels, multi if multi_label else None)
  metrics["eval_seconds"] = time.time() - start
  return metrics


def sharded_eval_step(config, model, dtype, mesh):
  """The eval step of ``config`` (the student in eval mode, the run's normalisation) over
  ``mesh``: class probabilities of every view."""
  step = train_step.make_eval_step(model=models.with_bn_axis(model, None),
                                   mean=config.data.mean, std=config.data.std, dtype=dtype)
  return train_step.shard_eval_step(step, mesh)


class Evaluator:
  """Multi-view evaluation on the eval split; the step and data set are built once.

  Calling it with the (replicated) variables returns the metrics, the same on
  every host; periodic evaluations reuse the compiled step and the tf.data
  pipeline.
  """

  def __init__(self, config, model, mesh, num_classes: int, info, dtype=jnp.float32):
    self._fn = sharded_eval_step(config, model, dtype, mesh)
    self._split = config.data.eval_split
    self._dataset = pipeline.create_dataset(
        config.data, self._split, train=False,
        batch_size=config.eval_batch_size // jax.process_count(), num_classes=num_classes)
    self._spec = jax.sharding.PartitionSpec(train_step.AXIS)
    self._mesh = mesh
    self._multi_label = info.multi_label
    self._num_videos = info.num_videos.get(self._split)
    self._max_batches = config.num_eval_steps

  def _put(self, batch):
    return transfer.make_global_batch(batch, self._mesh, self._spec)

  def __call__(self, variables) -> Dict[str, float]:
    return evaluate(self._fn, variables, self._dataset.as_numpy_iterator(), self._put,
                    self._multi_label, max_batches=self._max_batches, split=self._split,
                    expected_videos=self._num_videos)
