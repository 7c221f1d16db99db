"""Evaluation metrics (pure NumPy) and the multi-view evaluation loop.

Trimmed data sets report top-1 / top-5 and mean class accuracy; multi-label
ones (ActivityNet, FCVID) mean average precision: per-class AP over the
whole split, classes without a positive left out, then the mean (the
definition of scikit-learn's ``average_precision_score``).
"""

from __future__ import annotations

import time
from typing import Dict, Iterable, Optional

import jax
import numpy as np


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
      "num_videos": int(labels.shape[0]),
  }
  if multilabel is not None:
    metrics["mAP"] = mean_average_precision(probs, multilabel)
  return metrics


def predict(eval_fn, variables, batches: Iterable, put_batch, max_batches: int = -1):
  """Runs ``eval_fn`` over ``batches``; returns (probs, labels, multilabel) of real videos.

  ``put_batch`` places a host batch on the mesh; padding (``mask == 0``) is
  dropped.
  """
  probs, labels, multi = [], [], []
  for i, batch in enumerate(batches):
    if 0 <= max_batches <= i:
      break
    out = eval_fn(variables, put_batch({"video": batch["video"]}))
    out = np.asarray(jax.device_get(out))
    mask = np.asarray(batch.get("mask", np.ones(out.shape[0]))) > 0
    probs.append(out[mask])
    labels.append(np.asarray(batch["label"])[mask])
    if "multilabel" in batch:
      multi.append(np.asarray(batch["multilabel"])[mask])
  if not probs:
    raise ValueError("evaluation saw no videos: is the eval split empty?")
  return (np.concatenate(probs), np.concatenate(labels),
          np.concatenate(multi) if multi else None)


def evaluate(eval_fn, variables, batches, put_batch, multi_label: bool,
             max_batches: int = -1) -> Dict[str, float]:
  start = time.time()
  probs, labels, multi = predict(eval_fn, variables, batches, put_batch, max_batches)
  metrics = compute_metrics(probs, labels, multi if multi_label else None)
  metrics["eval_seconds"] = time.time() - start
  return metrics
