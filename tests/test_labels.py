"""Class lists: one parser (`reskd_jax.data.labels`) for the converter, the weights
converter, the predictor and the start-up checks, and one comparison by class names."""

import json

import jax
import pytest

from configs import minik_r50_112
from reskd_jax import checkpoints, config_checks, errors, models
from reskd_jax.data import labels, pipeline
from reskd_jax.tools import convert_weights, inference

import data_prep.labels
import data_prep.manifest
from data_prep.items import ConversionError


def _write(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text, encoding="utf-8")
  return str(path)


# ----------------------------------------------------------------------------
# The parser.


@pytest.mark.parametrize("text", [
    "abseiling\nair drumming\narchery\n",
    "0 abseiling\n1 air drumming\n2 archery\n",  # mmaction2's label maps
    "2 archery\n0 abseiling\n1 air drumming\n",  # the index decides, not the line
    "abseiling 0\nair drumming 1\narchery 2\n",
    "\n  abseiling  \n\n\nair drumming\r\narchery",  # blank lines, spaces, CRLF, no last EOL
    "\ufeffabseiling\nair drumming\narchery\n",  # a byte-order mark (Windows tools)
])
def test_text_class_lists(tmp_path, text):
  path = _write(tmp_path, "classes.txt", text)
  assert labels.load_classes(path) == ["abseiling", "air drumming", "archery"]
  assert labels.read_class_names(path) == ("abseiling", "air drumming", "archery")


def test_lines_are_names_unless_every_line_is_numbered(tmp_path):
  # One line without an index: every line is a whole name, digits included.
  path = _write(tmp_path, "classes.txt", "0 abseiling\nair drumming\n")
  assert labels.load_classes(path) == ["0 abseiling", "air drumming"]
  # Indices that are not 0..n-1: names, not a label map.
  path = _write(tmp_path, "classes.txt", "1 abseiling\n2 archery\n")
  assert labels.load_classes(path) == ["1 abseiling", "2 archery"]
  # No comment syntax: a '#' line is a class name, as the converter has always read it.
  path = _write(tmp_path, "classes.txt", "# kinetics\nabseiling\n")
  assert labels.load_classes(path) == ["# kinetics", "abseiling"]


def test_json_class_lists(tmp_path):
  path = _write(tmp_path, "classes.json", json.dumps(["b", "a"]))
  assert labels.load_classes(path) == ["b", "a"]
  path = _write(tmp_path, "labels.json", json.dumps({"Pushing [x]": "1", "Holding [x]": "0"}))
  assert labels.load_classes(path) == ["Holding [x]", "Pushing [x]"]
  path = _write(tmp_path, "gaps.json", json.dumps({"a": 0, "b": 2}))
  with pytest.raises(labels.ClassListError, match=r"gaps.json.*indices are not 0..1"):
    labels.load_classes(path)
  path = _write(tmp_path, "bad.json", "{not json")
  with pytest.raises(labels.ClassListError, match=r"bad.json.* is not valid JSON"):
    labels.load_classes(path)


@pytest.mark.parametrize("name,text", [
    ("dup.txt", "abseiling\narchery\nabseiling\n"),
    ("dup_numbered.txt", "0 abseiling\n1 archery\n2 abseiling\n"),
    ("dup.json", json.dumps(["abseiling", "abseiling"])),
])
def test_repeated_names_are_refused_naming_the_file(tmp_path, name, text):
  path = _write(tmp_path, name, text)
  with pytest.raises(labels.ClassListError) as info:
    labels.load_classes(path)
  assert str(info.value) == f"class list {path!r} repeats class names: ['abseiling']"
  # The converter's reading is the same rule; its error stops a conversion.
  with pytest.raises(ConversionError, match="repeats class names"):
    data_prep.labels.load_classes(path)


def test_unreadable_class_lists_are_one_line_naming_the_file(tmp_path):
  missing = str(tmp_path / "nope.txt")
  with pytest.raises(labels.ClassListError, match=r"class list .*nope.txt' does not exist"):
    labels.read_class_names(missing)
  empty = _write(tmp_path, "empty.txt", "\n \n")
  with pytest.raises(labels.ClassListError, match=r"empty.txt' is empty"):
    labels.read_class_names(empty)
  assert issubclass(labels.ClassListError, errors.DataError)  # main.py: one line, status 2


def test_a_data_set_directory_gives_its_manifests_classes(tmp_path):
  (tmp_path / "manifest.json").write_text(json.dumps({"classes": ["b", "a"], "splits": {}}))
  assert labels.read_class_names(str(tmp_path)) == ("b", "a")
  assert pipeline.dataset_info(str(tmp_path)).class_names == ("b", "a")
  (tmp_path / "manifest.json").write_text(json.dumps({"classes": ["b", "b"], "splits": {}}))
  with pytest.raises(labels.ClassListError, match="manifest of .* repeats class names"):
    labels.read_class_names(str(tmp_path))
  with pytest.raises(labels.ClassListError, match="manifest of .* repeats class names"):
    pipeline.dataset_info(str(tmp_path))


# ----------------------------------------------------------------------------
# The tools read class lists with the same parser.

META = {"arch": "resnet18", "num_classes": 3, "strides": [1, 2, 2, 2], "width": 4,
        "stage_sizes": [1, 1, 1, 1], "stem": "small"}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """Converted weights without class names (a 3-class toy network)."""
  root = tmp_path_factory.mktemp("weights")
  variables = models.init_variables(inference.build_model(META, 3), jax.random.key(0), 2, 16)
  return checkpoints.save_variables(str(root / "converted"), variables, META)


def test_inference_reads_numbered_class_lists(weights, tmp_path):
  path = _write(tmp_path, "classes.txt", "1 green\n0 red\n2 blue\n")
  assert inference.load(weights, classes=path).class_names == ("red", "green", "blue")
  dup = _write(tmp_path, "dup.txt", "red\ngreen\nred\n")
  with pytest.raises(labels.ClassListError, match="dup.txt' repeats class names"):
    inference.load(weights, classes=dup)


def test_convert_weights_refuses_a_bad_class_list_in_one_line(tmp_path, capsys):
  dup = _write(tmp_path, "dup.txt", "red\ngreen\nred\n")
  rc = convert_weights.main(["--format=torchvision", "--arch=resnet18",
                             f"--input={tmp_path / 'x.pth'}", f"--output={tmp_path / 'out'}",
                             f"--classes={dup}"])
  err = capsys.readouterr().err
  assert rc == 2 and err == f"error: class list {dup!r} repeats class names: ['red']\n"


# ----------------------------------------------------------------------------
# The one comparison: a teacher and the data set by class names.


def test_difference_compares_names_not_counts():
  assert labels.difference(["a", "b"], ["a", "b"]) is None
  assert labels.difference([], ["a", "b"]) is None  # unknown: nothing to compare
  assert labels.difference(["a", "b"], ()) is None
  assert labels.difference(["b", "a", "c"], ["b", "c", "a"]) == (
      "the same 3 classes in another order (label 1 is 'a' for the teacher, 'c' in the "
      "data set)")
  assert labels.difference(["a", "x"], ["a", "b"]) == (
      "other classes (2 vs 2; e.g. ['x'] in one but not the other)")
  assert labels.difference(["a"], ["a", "b"]) == (
      "other classes (1 vs 2; e.g. ['b'] in one but not the other)")


def test_teacher_of_as_many_classes_but_other_names_is_refused():
  cfg = minik_r50_112.get_config("tiny")
  names = ["c0", "c1", "c2", "c3"]
  meta = {"num_classes": 4, "class_names": ["c0", "c1", "c2", "zebra"]}
  with pytest.raises(errors.ConfigError, match=r"trained on other classes \(4 vs 4; e.g. "
                                               r"\['zebra'\]"):
    config_checks.check_teacher_data(cfg, meta, names, "T")
  meta["class_names"] = ["c0", "c2", "c1", "c3"]
  with pytest.raises(errors.ConfigError, match=r"label 1 is 'c2' for the teacher, 'c1' in "
                                               r"the data set"):
    config_checks.check_teacher_data(cfg, meta, names, "T")
  config_checks.check_teacher_data(cfg, {"num_classes": 4, "class_names": names}, names, "T")
  cfg.teacher.allow_other_classes = True
  config_checks.check_teacher_data(cfg, {"class_names": ["c0", "c1", "c2", "zebra"]}, names,
                                   "T")


def test_converter_says_how_a_second_class_list_differs(tmp_path):
  (tmp_path / "manifest.json").write_text(json.dumps({"classes": ["a", "b"], "splits": {}}))
  data_prep.manifest.check_classes(str(tmp_path), ["a", "b"])
  with pytest.raises(ConversionError, match=r"another class list \(the same 2 classes in "
                                            r"another order \(label 0 is 'a' for the "
                                            r"manifest, 'b' in this conversion\)\)"):
    data_prep.manifest.check_classes(str(tmp_path), ["b", "a"])
