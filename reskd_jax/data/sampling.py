"""Frame-index and crop-box rules of the authors' mmaction2 0.x pipeline, as TF ops.

Every function here is a small pure function of integers (and of uniform
draws `u` in [0, 1) that play the part of `np.random` / `random` in mmaction2),
built from TF ops so that `decode` can call it inside a tf.data graph.
Called eagerly on Python ints they return EagerTensors (`.numpy()`), which is
how the tests compare them with NumPy transcriptions of mmaction2.

Sources (mmaction2 0.x, `mmaction/datasets/pipelines/`):
  * loading.py   SampleFrames._get_train_clips / _get_test_clips, 'loop' mode.
  * augmentations.py  MultiScaleCrop(num_fixed_crops=13), RandomCrop, CenterCrop,
    ThreeCrop (Resize(scale=(-1, S)), shared with the converter, is `resize`).

Conventions: frame indices are 0-based; boxes are (x, y) offsets of the top
left corner plus (w, h) sizes, in pixels of the short-side-resized frame.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import tensorflow as tf

# mmaction2 MultiScaleCrop fixed offsets in units of (w_step, h_step), in its
# order: the 5 corner/centre crops, then the 8 extra "more_fix_crop" ones.
FIXED_CROP_STEPS = ((0, 0), (4, 0), (0, 4), (4, 4), (2, 2),
                    (0, 2), (4, 2), (2, 4), (2, 0),
                    (1, 1), (3, 1), (1, 3), (3, 3))


def _i32(x):
  return tf.cast(x, tf.int32)


def _f64(x):
  return tf.cast(x, tf.float64)


def randint(u, high):
  """`np.random.randint(high)` driven by `u` in [0, 1): floor(u * high), in [0, high - 1].

  `high` <= 0 gives 0 (callers only use the value where `high` > 0).
  """
  high = _i32(high)
  value = _i32(tf.floor(_f64(u) * _f64(high)))
  return tf.clip_by_value(value, 0, tf.maximum(high - 1, 0))


def train_clip_offsets(num_frames, clip_len: int, frame_interval: int, num_clips: int, u):
  """SampleFrames._get_train_clips (keep_tail_frames=False): [num_clips] start offsets.

  Args:
    num_frames: frames in the video (scalar).
    clip_len, frame_interval, num_clips: as in mmaction2's SampleFrames.
    u: [num_clips] uniform draws in [0, 1) (the random part).
  """
  n = _i32(num_frames)
  ori_clip_len = clip_len * frame_interval
  avg_interval = tf.math.floordiv(n - ori_clip_len + 1, num_clips)
  i = tf.range(num_clips, dtype=tf.int32)
  # avg_interval > 0: one random offset inside each of num_clips equal segments.
  in_segments = i * avg_interval + randint(u, avg_interval)
  # num_frames > max(num_clips, ori_clip_len): sorted random offsets.
  sorted_random = tf.sort(randint(u, n - ori_clip_len + 1))
  # avg_interval == 0: evenly spread, rounded half to even (np.around == tf.round).
  ratio = _f64(n - ori_clip_len + 1) / float(num_clips)
  evenly = _i32(tf.round(_f64(i) * ratio))
  zeros = tf.zeros([num_clips], tf.int32)
  return tf.where(avg_interval > 0, in_segments,
                  tf.where(n > max(num_clips, ori_clip_len), sorted_random,
                           tf.where(tf.equal(avg_interval, 0), evenly, zeros)))


def eval_clip_offsets(num_frames, clip_len: int, frame_interval: int, num_clips: int):
  """SampleFrames._get_test_clips of mmaction2 0.x: each clip starts at its segment's centre."""
  n = _i32(num_frames)
  ori_clip_len = clip_len * frame_interval
  avg_interval = _f64(n - ori_clip_len + 1) / float(num_clips)
  base = _f64(tf.range(num_clips)) * avg_interval
  offsets = _i32(base + avg_interval / 2.0)  # astype(int): truncation
  return tf.where(n > ori_clip_len - 1, offsets, tf.zeros([num_clips], tf.int32))


def clip_frame_indices(offsets, clip_len: int, frame_interval: int, num_frames):
  """[C] clip offsets -> [C, clip_len] frame indices, wrapped with 'loop' (mod num_frames)."""
  steps = tf.range(clip_len, dtype=tf.int32) * frame_interval
  return tf.math.floormod(_i32(offsets)[:, None] + steps[None, :], _i32(num_frames))


def tsn_train_indices(num_frames, num_segments: int, u):
  """TSN training: SampleFrames(clip_len=1, frame_interval=1, num_clips=T) -> [T] indices.

  A random frame in each of T equal segments (segment length num_frames // T);
  videos with fewer than T frames get mmaction2's evenly spread indices
  (frames repeat).
  """
  offsets = train_clip_offsets(num_frames, 1, 1, num_segments, u)
  return tf.reshape(clip_frame_indices(offsets, 1, 1, num_frames), [num_segments])


def tsn_test_indices(num_frames, num_segments: int, num_clips: int = 1):
  """TSN testing: [num_clips, T] indices.

  With one clip this is mmaction2 0.x test mode (SampleFrames(1, 1, T,
  test_mode=True)): the centre frame int(i * n / T + n / (2 T)) of each segment.
  Clip k of `num_clips` takes the frame at fraction (k + 0.5) / num_clips of
  each segment instead (our extension for multi-clip TSN testing; clip
  fractions are evenly spread and symmetric about the centre).
  """
  n = _i32(num_frames)
  avg = _f64(n) / float(num_segments)
  i = _f64(tf.range(num_segments))[None, :]
  frac = (_f64(tf.range(num_clips)) + 0.5)[:, None] / float(num_clips)
  indices = _i32(i * avg + avg * frac)
  return tf.math.floormod(indices, tf.maximum(n, 1))


def dense_train_indices(num_frames, clip_len: int, frame_interval: int, u):
  """Dense (3D-CNN) training: SampleFrames(clip_len, frame_interval, num_clips=1) -> [clip_len]."""
  offsets = train_clip_offsets(num_frames, clip_len, frame_interval, 1, tf.reshape(u, [1]))
  return tf.reshape(clip_frame_indices(offsets, clip_len, frame_interval, num_frames), [clip_len])


def dense_test_indices(num_frames, clip_len: int, frame_interval: int, num_clips: int):
  """Dense testing: SampleFrames(..., test_mode=True) -> [num_clips, clip_len], evenly spaced."""
  offsets = eval_clip_offsets(num_frames, clip_len, frame_interval, num_clips)
  return clip_frame_indices(offsets, clip_len, frame_interval, num_frames)


def multiscale_crop_boxes(image_h, image_w, crop_size: int, scales: Sequence[float],
                          max_wh_scale_gap: int):
  """mmaction2 MultiScaleCrop(input_size=crop_size, random_crop=False, num_fixed_crops=13).

  Returns:
    sizes: [N, 2] int32 candidate (w, h) crop sizes, in mmaction2's order
      (loop over h scales, then w scales, |i - j| <= max_wh_scale_gap), each
      side snapped to crop_size when within 3 pixels of it.
    offsets: [N, 13, 2] int32 (x, y) top-left corners: for candidate k, the 13
      fixed positions of `FIXED_CROP_STEPS` in steps of
      ((image_w - w_k) // 4, (image_h - h_k) // 4).
  """
  h, w = _i32(image_h), _i32(image_w)
  base = _f64(tf.minimum(h, w))
  crop_sizes = [_i32(base * float(s)) for s in scales]  # int(base_size * s)
  pairs = [(i, j) for i in range(len(scales)) for j in range(len(scales))
           if abs(i - j) <= max_wh_scale_gap]
  ws = tf.stack([crop_sizes[j] for _, j in pairs])
  hs = tf.stack([crop_sizes[i] for i, _ in pairs])
  ws = tf.where(tf.abs(ws - crop_size) < 3, crop_size, ws)
  hs = tf.where(tf.abs(hs - crop_size) < 3, crop_size, hs)
  w_step = tf.math.floordiv(w - ws, 4)
  h_step = tf.math.floordiv(h - hs, 4)
  fx = tf.constant([a for a, _ in FIXED_CROP_STEPS], tf.int32)
  fy = tf.constant([b for _, b in FIXED_CROP_STEPS], tf.int32)
  offsets = tf.stack([w_step[:, None] * fx[None, :], h_step[:, None] * fy[None, :]], axis=-1)
  return tf.stack([ws, hs], axis=-1), offsets


def sample_multiscale_crop(image_h, image_w, crop_size: int, scales: Sequence[float],
                           max_wh_scale_gap: int, u) -> Tuple[tf.Tensor, ...]:
  """One MultiScaleCrop draw -> (x, y, w, h): `u` [2] picks the size, then one of 13 offsets."""
  sizes, offsets = multiscale_crop_boxes(image_h, image_w, crop_size, scales, max_wh_scale_gap)
  k = randint(u[0], tf.shape(sizes)[0])
  m = randint(u[1], len(FIXED_CROP_STEPS))
  return offsets[k, m, 0], offsets[k, m, 1], sizes[k, 0], sizes[k, 1]


def random_crop_offset(image_h, image_w, crop_size: int, u):
  """mmaction2 RandomCrop: (x, y) uniform in [0, image - crop] (inclusive), from `u` [2]."""
  x = randint(u[0], _i32(image_w) - crop_size + 1)
  y = randint(u[1], _i32(image_h) - crop_size + 1)
  return x, y


def center_crop_offset(image_h, image_w, crop_size: int):
  """mmaction2 CenterCrop: (x, y) = ((w - crop) // 2, (h - crop) // 2)."""
  return (tf.math.floordiv(_i32(image_w) - crop_size, 2),
          tf.math.floordiv(_i32(image_h) - crop_size, 2))


def three_crop_offsets(image_h, image_w, crop_size: int):
  """mmaction2 ThreeCrop positions -> [3, 2] (x, y), ordered (left, right, middle).

  mmaction2 requires the crop to span the short side (crop == short side) and
  slides it along the long side at offsets (0, 2 * step, step), step =
  (long - crop) // 2. For a crop smaller than the short side we keep it centred
  on the short side (identical to mmaction2 when crop == short side).
  """
  h, w = _i32(image_h), _i32(image_w)
  landscape = w >= h
  long_side = tf.where(landscape, w, h)
  short = tf.where(landscape, h, w)
  step = tf.math.floordiv(long_side - crop_size, 2)
  along = tf.stack([0 * step, 2 * step, step])
  across = tf.fill([3], tf.math.floordiv(short - crop_size, 2))
  xs = tf.where(landscape, along, across)
  ys = tf.where(landscape, across, along)
  return tf.stack([xs, ys], axis=-1)
