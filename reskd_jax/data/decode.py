"""Per-video graph functions: a parsed record -> sampled, decoded and cropped uint8 frames.

The frame and crop rules are `sampling`'s; the record layouts `records`'. Crop
boxes are drawn before decoding (the frame size comes from the JPEG header), so
frames stored at the short side are decoded only over the window the crops
span (`tf.image.decode_and_crop_jpeg`), with the very pixels a full decode
would give, and each frame is decoded, cropped and resized in turn (an
unrolled graph, no loop) while it is in the CPU cache. `pipeline` assembles
these into tf.data datasets.
"""

import tensorflow as tf

from reskd_jax.data import clips, records, resize, sampling

_EOI_WINDOW = 32  # a JPEG's end-of-image marker must lie in its last bytes
# Pixels decoded around a crop window: libjpeg's chroma upsampling at a
# window's edge needs the neighbouring column (1 suffices; 2 for safety).
_CROP_MARGIN = 2
# Sampled frames of one video decoded in an unrolled graph (more: a loop over distinct frames).
_MAX_UNROLLED = 32


def _num_frames(example, split: str):
  """Frames actually stored, checked against the context `num_frames`."""
  n = records.stored_frames(example)
  check = tf.debugging.Assert(
      tf.logical_and(n >= 1, tf.equal(n, example["num_frames"])),
      [f"bad video in split {split}: no frames or num_frames mismatch; video_id:",
       example["video_id"], "stored frames:", n, "num_frames:", example["num_frames"]])
  with tf.control_dependencies([check]):
    return tf.identity(n)


def _check_labels(example, num_classes: int, split: str):
  labels = example["labels"]
  ok = tf.logical_and(tf.size(labels) >= 1,
                      tf.reduce_all(tf.logical_and(labels >= 0, labels < num_classes)))
  check = tf.debugging.Assert(
      ok, [f"bad labels in split {split} (need 1+ labels in [0, {num_classes})); video_id:",
           example["video_id"], "labels:", labels])
  with tf.control_dependencies([check]):
    return tf.identity(labels)


def _looks_like_jpeg(strings):
  """Start-of-image marker first and an end-of-image marker in the last bytes (truncation)."""
  length = tf.strings.length(strings)
  head = tf.io.decode_raw(tf.strings.substr(strings, tf.zeros_like(length), tf.fill(
      tf.shape(length), 2)), tf.uint8, fixed_length=2)
  # The last _EOI_WINDOW + 1 bytes (zero-padded when shorter) hold the pairs that may be EOI.
  tail_len = _EOI_WINDOW + 1
  tail = tf.io.decode_raw(tf.strings.substr(strings, tf.maximum(length - tail_len, 0),
                                            tf.fill(tf.shape(length), tail_len)),
                          tf.uint8, fixed_length=tail_len)
  soi = tf.logical_and(tf.equal(head[:, 0], 0xFF), tf.equal(head[:, 1], 0xD8))
  eoi = tf.reduce_any(tf.logical_and(tf.equal(tail[:, :-1], 0xFF), tf.equal(tail[:, 1:], 0xD9)),
                      axis=1)
  return tf.logical_and(tf.logical_and(soi, eoi), length >= 4)


def _jpegs(example, indices, split: str):
  """The JPEG strings of the sampled frames, checked for truncation, and how to reorder them.

  Only these frames are read: taken from the parsed record ("sequence_example"
  layout), or read from the shard's `.frames` file and checked against their
  CRC-32 ("frames" layout, `records.read_frames`).

  A few sampled positions (a static count up to `_MAX_UNROLLED`: training
  clips, single-clip tests) give one string per position and `inverse` None;
  their frames are decoded one by one in an unrolled graph. Many positions
  (multi-clip tests, where clips share frames) give each distinct frame once
  and `inverse` with indices == unique[inverse] (gather the decoded frames
  with it to restore the sampled order).
  """
  indices = tf.reshape(indices, [-1])
  count = indices.shape[0]
  if count is not None and count <= _MAX_UNROLLED:
    unique, inverse = indices, None
  else:
    unique, inverse = tf.unique(indices)
  checks = []
  if records.FRAMES_KEY in example:
    strings = tf.gather(example[records.FRAMES_KEY], unique)
  else:
    strings, intact = records.read_frames(example, unique)
    checks.append(tf.debugging.Assert(
        tf.reduce_all(intact),
        [f"damaged frames file in split {split} (rerun data_prep to rewrite it):",
         example["frames_file"], "video_id:", example["video_id"],
         "frames failing their CRC-32:", tf.boolean_mask(unique, tf.logical_not(intact))]))
  with tf.control_dependencies(checks):
    ok = _looks_like_jpeg(strings)
  checks.append(tf.debugging.Assert(
      tf.reduce_all(ok),
      [f"corrupt JPEG frame in split {split}; video_id:", example["video_id"],
       "frame indices:", tf.boolean_mask(unique, tf.logical_not(ok))]))
  with tf.control_dependencies(checks):
    return tf.identity(strings), inverse


def _decode(string, ratio: int, window=None):
  """uint8 [h, w, 3]: one JPEG decoded at 1/`ratio` scale, whole or only `window`.

  `window` is [y, x, height, width] in pixels of the scaled frame. libjpeg
  decodes only the rows and iMCU columns the window touches.
  """
  kwargs = dict(channels=3, ratio=ratio, dct_method="INTEGER_ACCURATE")
  if window is None:
    return tf.io.decode_jpeg(string, **kwargs)
  return tf.image.decode_and_crop_jpeg(string, window, **kwargs)


def _map_frames(fn, strings, num_outputs: int):
  """[fn(s) for s in strings], each of fn's `num_outputs` results stacked over the frames.

  A static number of strings up to `_MAX_UNROLLED` is unrolled: each frame
  goes through decode, crop and resize while it is still in the CPU cache,
  and no loop machinery runs (a `tf.map_fn`'s per-frame overhead is a sizeable
  fraction of a frame's resize; figures in docs/benchmarks.md, "Figures the
  code's choices rest on"). Longer or dynamic lists run in a `tf.map_fn`.
  """
  count = strings.shape[0]
  if count is not None and count <= _MAX_UNROLLED:
    per_frame = [fn(strings[i]) for i in range(count)]
    return [tf.stack([outputs[k] for outputs in per_frame]) for k in range(num_outputs)]
  spec = [tf.TensorSpec([None, None, 3], tf.uint8)] * num_outputs
  return tf.map_fn(fn, strings, fn_output_signature=spec)


def _decoded_size(strings, ratio: int):
  """(h, w) of the first frame decoded at 1/`ratio` scale (libjpeg rounds up), from its header."""
  shape = tf.image.extract_jpeg_shape(strings[0])
  return -(-shape[0] // ratio), -(-shape[1] // ratio)


def _decode_crops(strings, *, ratio: int, short_side: int, boxes_fn, out_size=None):
  """Decodes frames, resizes them to `short_side` and returns the crops `boxes_fn` picks.

  `boxes_fn(h, w)` gives a list of (x, y, w, h) boxes in pixels of the
  short-side-resized frame (h, w); the result is a list with one uint8
  [frames, h, w, 3] tensor per box, each crop resized to `out_size` squared
  when that is given. When the stored frames already have the short side
  (data converted at the training short side), only the window spanning the
  boxes is decoded (`tf.image.decode_and_crop_jpeg`), widened by
  `_CROP_MARGIN` pixels so that chroma upsampling at its edges sees the same
  neighbours as a full decode: the crops equal full decode then crop, bit for
  bit. Otherwise the frames are decoded whole and resized first.
  """
  dec_h, dec_w = _decoded_size(strings, ratio)
  new_h, new_w = resize.short_side_size(dec_h, dec_w, short_side)
  boxes = boxes_fn(new_h, new_w)
  stored_at_size = tf.logical_and(tf.equal(dec_h, new_h), tf.equal(dec_w, new_w))

  def decode(resize_crops: bool):
    def finish(crops):
      return [_bilinear(c, out_size, out_size) for c in crops] if resize_crops else crops

    def crop_window():
      x0 = tf.maximum(tf.reduce_min(tf.stack([b[0] for b in boxes])) - _CROP_MARGIN, 0)
      y0 = tf.maximum(tf.reduce_min(tf.stack([b[1] for b in boxes])) - _CROP_MARGIN, 0)
      x1 = tf.minimum(tf.reduce_max(tf.stack([b[0] + b[2] for b in boxes])) + _CROP_MARGIN,
                      dec_w)
      y1 = tf.minimum(tf.reduce_max(tf.stack([b[1] + b[3] for b in boxes])) + _CROP_MARGIN,
                      dec_h)
      window = tf.stack([y0, x0, y1 - y0, x1 - x0])

      def frame(string):
        image = _decode(string, ratio, window)
        return finish([_crop(image, x - x0, y - y0, w, h) for x, y, w, h in boxes])
      return _map_frames(frame, strings, len(boxes))

    def whole_frames():
      def frame(string):
        image = _bilinear(_decode(string, ratio), new_h, new_w)  # sizes differ here
        return finish([_crop(image, x, y, w, h) for x, y, w, h in boxes])
      return _map_frames(frame, strings, len(boxes))

    return tf.cond(stored_at_size, crop_window, whole_frames)

  if out_size is None:
    return decode(False)
  # Whether the crops need resizing is decided once per video, not per frame.
  same = tf.reduce_all(tf.stack([tf.logical_and(tf.equal(w, out_size), tf.equal(h, out_size))
                                 for _, _, w, h in boxes]))
  return tf.cond(same, lambda: decode(False), lambda: decode(True))


def _bilinear(images, height, width):
  """Bilinear (no antialias, like cv2 INTER_LINEAR) uint8 resize of [..., h, w, 3]."""
  # The kernel interpolates in float32 either way; it runs faster on float32 input.
  out = tf.image.resize(tf.cast(images, tf.float32), tf.stack([height, width]),
                        method="bilinear", antialias=False)
  # A convex combination of uint8 values: rounding alone keeps it in [0, 255].
  return tf.cast(tf.round(out), tf.uint8)


def _resize(images, height, width):
  """`_bilinear`, or nothing when the images already have that size."""
  shape = tf.shape(images)
  same = tf.logical_and(tf.equal(shape[-3], height), tf.equal(shape[-2], width))
  return tf.cond(same, lambda: images, lambda: _bilinear(images, height, width))


def _crop(images, x, y, w, h):
  """The (x, y, w, h) box of [..., H, W, C] images."""
  return images[..., y:y + h, x:x + w, :]


def _multihot(labels, num_classes: int):
  return tf.reduce_max(tf.one_hot(labels, num_classes, dtype=tf.float32), axis=0)


def element_seeds(base, position):
  """Seeds (frames, crop, label) of stream position `position` of the epoch seeded `base`."""
  return tf.random.experimental.stateless_split(tf.stack([base, tf.cast(position, tf.int64)]), 3)


def sample_frames(example, seed, *, data_cfg, num_classes: int, split: str):
  """One parsed video -> its sampled JPEGs {"frames": [K] strings, "labels", (+ "inverse")}.

  Runs before the shuffle, so that the shuffle buffer holds the few JPEGs a
  clip uses rather than whole videos (8 of 64 frames: 8x less memory, and
  the record is parsed while it is still in the CPU cache). `seed` is
  the seed of the frame draw. "inverse" (sampled position -> string) is
  present only when the clip has more than `_MAX_UNROLLED` frames (see `_jpegs`).
  """
  n = _num_frames(example, split)
  labels = _check_labels(example, num_classes, split)
  if data_cfg.sampling == "tsn":
    u = tf.random.stateless_uniform([data_cfg.num_frames], seed, dtype=tf.float64)
    indices = sampling.tsn_train_indices(n, data_cfg.num_frames, u)
  else:
    u = tf.random.stateless_uniform([1], seed, dtype=tf.float64)
    indices = sampling.dense_train_indices(n, data_cfg.clip_len, data_cfg.frame_interval, u)
  strings, inverse = _jpegs(example, indices, split)
  sampled = {"frames": strings, "labels": labels}
  if inverse is not None:
    sampled["inverse"] = inverse
  return sampled


def train_example(sampled, seeds, *, data_cfg, num_classes: int):
  """`sample_frames`' output -> {"video": uint8 [T, S, S, 3], "label", "multilabel"}.

  `seeds` are the element's seeds (`element_seeds`); [1] draws the crop, [2] the label.
  """
  s = clips.output_size(data_cfg)
  ratio = clips.decode_scale(data_cfg)
  labels = sampled["labels"]
  u_crop = tf.random.stateless_uniform([2], seeds[1], dtype=tf.float64)

  def box(h, w):
    if data_cfg.multiscale_crop:
      return [sampling.sample_multiscale_crop(h, w, s, tuple(data_cfg.scales),
                                              data_cfg.max_wh_scale_gap, u_crop)]
    x, y = sampling.random_crop_offset(h, w, s, u_crop)
    return [(x, y, tf.constant(s), tf.constant(s))]

  video, = _decode_crops(sampled["frames"], ratio=ratio,
                         short_side=data_cfg.short_side // ratio, boxes_fn=box, out_size=s)
  if "inverse" in sampled:
    video = tf.gather(video, sampled["inverse"])
  u_label = tf.random.stateless_uniform([], seeds[2], dtype=tf.float64)
  label = labels[sampling.randint(u_label, tf.size(labels))]
  t = clips.frames_per_clip(data_cfg)
  return {
      "video": tf.ensure_shape(video, [t, s, s, 3]),
      "label": tf.cast(label, tf.int32),
      "multilabel": tf.ensure_shape(_multihot(labels, num_classes), [num_classes]),
  }


def eval_indices(num_frames, data_cfg):
  """The test transform's frame indices of a video of `num_frames` frames: [clips, T]."""
  if data_cfg.sampling == "tsn":
    return sampling.tsn_test_indices(num_frames, data_cfg.num_frames, data_cfg.test_num_clips)
  return sampling.dense_test_indices(num_frames, data_cfg.clip_len, data_cfg.frame_interval,
                                     data_cfg.test_num_clips)


def _eval_boxes(data_cfg, s: int):
  """`boxes(h, w)`: the test crops (centre, or three) of side `s` in an (h, w) frame."""
  def boxes(h, w):
    if data_cfg.test_num_crops == 1:
      return [(*sampling.center_crop_offset(h, w, s), s, s)]
    offsets = sampling.three_crop_offsets(h, w, s)
    return [(offsets[c, 0], offsets[c, 1], s, s) for c in range(3)]
  return boxes


def _stack_views(crops, inverse, data_cfg, s: int):
  """Crops [U, s, s, 3] per box -> uint8 [V, T, s, s, 3] (view = crop * clips + clip).

  `inverse` maps the sampled positions to the U crops (None: one crop per position).
  """
  t = clips.frames_per_clip(data_cfg)
  if inverse is not None:
    crops = [tf.gather(c, inverse) for c in crops]
  views = [tf.reshape(c, [data_cfg.test_num_clips, t, s, s, 3]) for c in crops]
  return tf.ensure_shape(tf.concat(views, axis=0), [clips.num_views(data_cfg), t, s, s, 3])


def eval_views(images, inverse, data_cfg):
  """The test transform on decoded frames: uint8 [V, T, S, S, 3] (view = crop * clips + clip).

  `images` are the distinct sampled frames [U, H, W, 3] at any size (short
  side resized here) and `inverse` [clips * T] maps each sampled position to
  one of them (`tf.unique` of `eval_indices`). The evaluator's own path
  (`eval_example`) decodes only the crop windows of the JPEGs instead.
  """
  s = data_cfg.crop_size
  shape = tf.shape(images)
  new_h, new_w = resize.short_side_size(shape[1], shape[2], data_cfg.short_side)
  images = _resize(images, new_h, new_w)
  crops = [_crop(images, x, y, w, h) for x, y, w, h in _eval_boxes(data_cfg, s)(new_h, new_w)]
  return _stack_views(crops, inverse, data_cfg, s)


def eval_example(example, *, data_cfg, num_classes: int, split: str):
  """One parsed video -> {"video": uint8 [V, T, S, S, 3], "label", "multilabel", "mask"}."""
  s = clips.output_size(data_cfg)
  ratio = clips.decode_scale(data_cfg)
  n = _num_frames(example, split)
  labels = _check_labels(example, num_classes, split)
  strings, inverse = _jpegs(example, eval_indices(n, data_cfg), split)
  crops = _decode_crops(strings, ratio=ratio, short_side=data_cfg.short_side // ratio,
                        boxes_fn=_eval_boxes(data_cfg, s))
  video = _stack_views(crops, inverse, data_cfg, s)
  return {
      "video": video,
      "label": tf.cast(labels[0], tf.int32),
      "multilabel": tf.ensure_shape(_multihot(labels, num_classes), [num_classes]),
      "mask": tf.constant(1.0, tf.float32),
  }


def padding_example(data_cfg, num_classes: int):
  s, t = clips.output_size(data_cfg), clips.frames_per_clip(data_cfg)
  return {
      "video": tf.zeros([clips.num_views(data_cfg), t, s, s, 3], tf.uint8),
      "label": tf.constant(0, tf.int32),
      "multilabel": tf.zeros([num_classes], tf.float32),
      "mask": tf.constant(0.0, tf.float32),
  }
