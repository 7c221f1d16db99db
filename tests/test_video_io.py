"""`reskd_jax.data.video_io`: the reader of video files and frame folders that the converter
and the predictor share, on small files written here (PyAV, PIL)."""

import os

import numpy as np
import pytest
from PIL import Image

from reskd_jax.data import resize, video_io
from reskd_jax.errors import DataError
from data_helpers import make_frames, put_frames, put_video

FRAMES = make_frames(1, num=8, h=32, w=40)  # landscape: 40 wide, 32 high


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
  """A lossless 8-frame H.264 file (8 fps) and the frames it holds."""
  path = str(tmp_path_factory.mktemp("video") / "clip.mp4")
  put_video(path, FRAMES)
  return path


def _bilinear(frames, height, width):
  return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR))
                   for f in frames])


# ----------------------------------------------------------------------------
# Video files.


def test_read_video_gives_every_frame_at_the_source_size(clip):
  frames = video_io.read_video(clip)
  assert frames.shape == (8, 32, 40, 3) and frames.dtype == np.uint8
  # Lossless H.264 (4:4:4) back to RGB: within the colour conversion's rounding.
  np.testing.assert_allclose(frames.astype(int), FRAMES.astype(int), atol=3)
  assert np.abs(np.diff(frames.astype(int), axis=0)).mean(axis=(1, 2, 3)).min() > 5  # in order


def test_frame_stride_and_fps_keep_fewer_frames(clip):
  every = video_io.read_video(clip)
  strided = video_io.read_video(clip, opts=video_io.FrameOptions(frame_stride=3))
  np.testing.assert_array_equal(strided, every[::3])
  half_rate = video_io.read_video(clip, opts=video_io.FrameOptions(fps=4))  # the file: 8 fps
  np.testing.assert_array_equal(half_rate, every[::2])


def test_read_video_resizes_the_short_side(clip):
  every = video_io.read_video(clip)
  small = video_io.read_video(clip, short_side=16)
  assert small.shape == (8, 16, 20, 3)
  assert resize.short_side_size(32, 40, 16) == (16, 20)
  np.testing.assert_array_equal(small, _bilinear(every, 16, 20))  # PIL bilinear, frame by frame
  assert video_io.read_video(clip, short_side=32).shape == (8, 32, 40, 3)  # already there


def test_portrait_video_and_odd_short_side(tmp_path):
  path = str(tmp_path / "portrait.mp4")
  put_video(path, make_frames(2, num=3, h=40, w=24))
  frames = video_io.read_video(path, short_side=15)
  assert frames.shape == (3, 25, 15, 3)  # 40 * 15 / 24 = 25; the short side is the width


# ----------------------------------------------------------------------------
# Frame folders.


def test_frame_folder_reads_in_number_order(tmp_path):
  folder = str(tmp_path / "frames")
  decoded = put_frames(folder, FRAMES[:5])
  open(os.path.join(folder, "notes.txt"), "w").close()  # not a frame
  frames = video_io.read_video(folder)
  np.testing.assert_array_equal(frames, decoded)  # exactly what PIL decodes, in order
  np.testing.assert_array_equal(video_io.read_video(folder, short_side=16),
                                _bilinear(decoded, 16, 20))
  other = str(tmp_path / "other")
  os.makedirs(other)
  for i, f in enumerate(FRAMES[:3]):
    Image.fromarray(f).save(os.path.join(other, f"frame{i}.png"))
  frames = video_io.read_video(other, opts=video_io.FrameOptions(filename_tmpl="frame{}.png"))
  np.testing.assert_array_equal(frames, FRAMES[:3])  # PNG: lossless


def test_frame_folder_with_a_gap_is_partial(tmp_path):
  folder = str(tmp_path / "gap")
  decoded = put_frames(folder, FRAMES[:5])
  os.remove(os.path.join(folder, "img_00003.jpg"))
  with pytest.raises(video_io.PartialVideo, match=r"lacks 1 frame\(s\): number\(s\) 3 of 1..5"):
    video_io.read_video(folder)
  kept = video_io.read_video(folder, opts=video_io.FrameOptions(allow_partial=True))
  np.testing.assert_array_equal(kept, decoded[[0, 1, 3, 4]])


def test_frame_folder_refusals(tmp_path):
  folder = str(tmp_path / "dups")
  put_frames(folder, FRAMES[:2])
  Image.fromarray(FRAMES[0]).save(os.path.join(folder, "img_1.jpg"))
  with pytest.raises(video_io.VideoReadError, match="1: img_00001.jpg, img_1.jpg"):
    video_io.read_video(folder)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(video_io.VideoReadError, match="no frames matching 'img_{:05d}.jpg'"):
    video_io.read_video(str(empty))
  mixed = str(tmp_path / "mixed")
  put_frames(mixed, FRAMES[:2])
  Image.fromarray(FRAMES[2][:16]).save(os.path.join(mixed, "img_00003.jpg"))
  with pytest.raises(video_io.VideoReadError, match="mixes frame sizes: img_00001.jpg is 40x32"):
    video_io.read_video(mixed)
  squeezed = video_io.read_video(mixed, opts=video_io.FrameOptions(resize_mixed_frames=True))
  assert squeezed.shape == (3, 32, 40, 3)


def test_sixteen_bit_frames_are_scaled_to_eight_bits():
  wide = Image.fromarray(np.array([[0, 257 * 100, 65535]], np.uint16))
  assert wide.mode.startswith("I;16")
  np.testing.assert_array_equal(np.asarray(video_io.to_rgb8(wide))[0, :, 0], [0, 100, 255])


# ----------------------------------------------------------------------------
# What cannot be read: one line, a DataError, naming the file.


def _one_line_data_error(path, **kwargs):
  with pytest.raises(DataError) as info:
    video_io.read_video(path, **kwargs)
  message = str(info.value)
  assert "\n" not in message and path in message, message
  return message


def test_missing_and_corrupt_sources_are_one_line_data_errors(tmp_path):
  assert _one_line_data_error(str(tmp_path / "nope.mp4")).startswith("missing file: ")
  garbage = tmp_path / "garbage.mp4"
  garbage.write_bytes(b"not a video at all" * 50)
  assert _one_line_data_error(str(garbage)).startswith("unreadable video ")
  empty = tmp_path / "empty.mp4"
  empty.write_bytes(b"")
  assert _one_line_data_error(str(empty)).startswith("unreadable video ")
  folder = str(tmp_path / "broken_frame")
  put_frames(folder, FRAMES[:2])
  with open(os.path.join(folder, "img_00002.jpg"), "wb") as f:
    f.write(b"\xff\xd8 not a jpeg")
  assert "corrupt frame " in _one_line_data_error(folder)


def test_a_cut_video_is_partial_or_unreadable_never_a_traceback(tmp_path, clip):
  data = open(clip, "rb").read()
  cut = tmp_path / "cut.mp4"
  cut.write_bytes(data[:len(data) // 2])
  with pytest.raises(video_io.VideoReadError) as info:
    video_io.read_video(str(cut))
  assert "\n" not in str(info.value) and str(cut) in str(info.value)
