"""The repository's shape: what the runtime imports, where docs point, what the README lists.

Static checks (ast, file reads) plus one subprocess that imports the runtime
package; nothing here trains or compiles.
"""

import ast
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("reskd_jax", "data_prep")
THIS_FILE = os.path.relpath(os.path.abspath(__file__), ROOT)


def _modules(package: str):
  """Relative paths of every .py file of `package` (subpackages included)."""
  found = []
  for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, package)):
    dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
    found += [os.path.relpath(os.path.join(dirpath, f), ROOT).replace(os.sep, "/")
              for f in sorted(filenames) if f.endswith(".py")]
  return found


def _module_name(path: str) -> str:
  name = path[:-len(".py")].replace("/", ".")
  return name[:-len(".__init__")] if name.endswith(".__init__") else name


# ----------------------------------------------------------------------------
# What the runtime imports.

_NO_TORCH = """
import os, sys
import reskd_jax, reskd_jax.models, reskd_jax.losses, reskd_jax.train
torch = sorted(m for m in sys.modules if m.split(".")[0] == "torch")
assert not torch, f"importing reskd_jax, models, losses and train imported {torch[:5]}"
import importlib
for name in sys.argv[1:]:
  importlib.import_module(name)
  torch = sorted(m for m in sys.modules if m.split(".")[0] == "torch")
  assert not torch, f"importing {name} imported {torch[:5]}"
print("ok")
"""


def test_runtime_package_imports_no_torch():
  """PyTorch is an optional dependency: the converter imports it when it runs, nothing else."""
  everything = [_module_name(p) for p in _modules("reskd_jax")
                if not p.endswith("__main__.py")]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-c", _NO_TORCH, *everything], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  last = (proc.stderr.strip().splitlines() or [""])[-1]
  assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (
      f"{last}\n{proc.stderr[-3000:]}")


def _imported_modules(path: str):
  """Every module `path` imports, at any depth (function-level imports included).

  Relative imports are resolved; `importlib.import_module("...")` and
  `__import__("...")` with a literal name count as imports too.
  """
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  package = _module_name(path).split(".")
  if not path.endswith("__init__.py"):
    package = package[:-1]
  names = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package[:len(package) - node.level + 1]
        module = ".".join(base + ([node.module] if node.module else []))
      else:
        module = node.module
      names.append(module)
      names += [f"{module}.{alias.name}" for alias in node.names]
    elif isinstance(node, ast.Call) and node.args:
      func = node.func
      called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
      arg = node.args[0]
      if (called in ("import_module", "__import__") and isinstance(arg, ast.Constant)
          and isinstance(arg.value, str)):
        names.append(arg.value)
  return names


def _package_edges():
  """{(importing package, imported package): [file, ...]} between reskd_jax and data_prep."""
  edges = {}
  for package in PACKAGES:
    for path in _modules(package):
      for name in _imported_modules(path):
        top = name.split(".")[0]
        if top in PACKAGES and top != package:
          edges.setdefault((package, top), []).append(path)
  return edges


def test_no_import_cycle_between_packages():
  """data_prep depends on reskd_jax (records), never the other way round."""
  edges = _package_edges()
  # The walk sees the intended direction (so it would see the other one too).
  assert ("data_prep", "reskd_jax") in edges, edges
  assert ("reskd_jax", "data_prep") not in edges, (
      f"reskd_jax imports data_prep in {sorted(set(edges[('reskd_jax', 'data_prep')]))}; "
      f"data_prep imports reskd_jax in {sorted(set(edges[('data_prep', 'reskd_jax')]))}")


def test_import_walker_sees_every_kind_of_import(tmp_path, monkeypatch):
  """The walker behind the cycle test finds nested, relative and dynamic imports."""
  pkg = tmp_path / "reskd_jax"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  (pkg / "mod.py").write_text(
      "import os\n"
      "from . import sibling\n"
      "def f():\n"
      "  from data_prep import cli\n"
      "  import importlib\n"
      "  return importlib.import_module('data_prep.shards')\n")
  monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
  names = _imported_modules("reskd_jax/mod.py")
  assert {"os", "reskd_jax.sibling", "data_prep", "data_prep.shards"} <= set(names), names


# ----------------------------------------------------------------------------
# What the tracked files say.

# Patterns a file users clone must not contain: paths outside the repository, and
# words about how the code was produced rather than what it does.
_OUTSIDE_PATHS = re.compile(r"\.\./shared|/shared/reference|/work/|/home/\w|/Users/\w")
_PROCESS_WORDS = re.compile(
    r"\b(issues?|PR|pull request|ticket)\s*#\s*\d+|\bthis (task|session)\b|\bGPU lent\b"
    r"|\bno GPU was lent\b|\bworktree\b|\bbriefing\b|\bthe lead\b", re.IGNORECASE)
_PROCESS_NAMES = re.compile(r"\bhelpers? [A-Z]\b")  # "helper H" names a person, not code
_SKIP_DIRS = {".git", ".venv", ".cache", "runs", "__pycache__", "build", "dist",
              ".pytest_cache"}


def _tracked_files():
  try:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                         check=True, timeout=60).stdout.decode()
    files = [f for f in out.split("\0") if f]
  except (OSError, subprocess.CalledProcessError):
    files = []  # not a git checkout (an unpacked archive): walk the tree instead
    for dirpath, dirnames, filenames in os.walk(ROOT):
      dirnames[:] = [d for d in dirnames
                     if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
      files += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in filenames
                if not f.startswith(".coord")]
  return sorted(f for f in files if os.path.isfile(os.path.join(ROOT, f)))


def test_no_file_points_outside_the_repository_or_speaks_of_process():
  files = _tracked_files()
  assert "README.md" in files and "reskd_jax/losses.py" in files, files[:20]
  problems = []
  for path in files:
    if path == THIS_FILE:
      continue  # the patterns themselves
    try:
      with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        lines = f.read().splitlines()
    except UnicodeDecodeError:
      continue  # binary
    for number, line in enumerate(lines, 1):
      for pattern in (_OUTSIDE_PATHS, _PROCESS_WORDS, _PROCESS_NAMES):
        match = pattern.search(line)
        if match:
          problems.append(f"{path}:{number}: {match.group(0)!r} in {line.strip()[:100]!r}")
  assert not problems, "\n".join(problems)


def test_license_and_faithfulness_docs_exist():
  with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
    license_text = f.read()
  assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
  assert "END OF TERMS AND CONDITIONS" in license_text  # the full text, not a stub
  with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
    assert 'license="Apache-2.0"' in f.read()
  with open(os.path.join(ROOT, "docs", "faithfulness.md"), encoding="utf-8") as f:
    faithfulness = f.read()
  for topic in ("antialias", "train mode", "MSE", "MultiScaleCrop", "Known differences"):
    assert topic in faithfulness, topic
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    assert "docs/faithfulness.md" in f.read()


def test_setup_installs_only_the_two_packages():
  """configs/ is loaded by path from a checkout, not installed as a package named `configs`."""
  with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
    tree = ast.parse(f.read())
  includes = [node for node in ast.walk(tree) if isinstance(node, ast.keyword)
              and node.arg == "include"]
  assert len(includes) == 1
  names = ast.literal_eval(includes[0].value)
  assert sorted({n.split(".")[0] for n in names}) == sorted(PACKAGES), names


def _markdown_files():
  return [f for f in _tracked_files() if f.endswith(".md")]


def test_markdown_links_resolve_inside_the_repository():
  broken = []
  for path in _markdown_files():
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
      text = f.read()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
      if re.match(r"[a-z]+://|mailto:|#", target):
        continue
      resolved = os.path.normpath(os.path.join(ROOT, os.path.dirname(path),
                                               target.split("#")[0]))
      if not resolved.startswith(ROOT + os.sep) or not os.path.exists(resolved):
        broken.append(f"{path}: {target}")
  assert not broken, broken


# ----------------------------------------------------------------------------
# The README's Layout table.


def _layout_paths():
  """Paths in the first column of README's "## Layout" table, in order.

  A bare name in a cell (`sampling.py` after `reskd_jax/data/pipeline.py`)
  lives in the folder of the path before it.
  """
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read()
  section = re.search(r"^## Layout\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
  assert section, "README.md has no '## Layout' section"
  paths = []
  for line in section.group(1).splitlines():
    cells = line.split("|")
    if not line.startswith("|") or len(cells) < 3 or set(cells[1].strip()) <= {"-", " "}:
      continue
    folder = ""
    for name in re.findall(r"`([^`]+)`", cells[1]):
      if "/" in name.rstrip("/"):
        folder = name.rstrip("/").rsplit("/", 1)[0] + "/"
        paths.append(name)
      else:
        paths.append(folder + name)
  return paths


def test_layout_table_matches_the_tree():
  paths = _layout_paths()
  assert "main.py" in paths, paths
  missing = [p for p in paths if not os.path.exists(os.path.join(ROOT, p))]
  assert not missing, f"README's Layout table lists paths that do not exist: {missing}"
  folders = [p for p in paths if p.endswith("/")]
  unlisted = [m for package in PACKAGES for m in _modules(package)
              if not m.endswith("/__init__.py") and m not in paths
              and not any(m.startswith(folder) for folder in folders)]
  assert not unlisted, f"modules missing from README's Layout table: {unlisted}"


# ----------------------------------------------------------------------------
# The package's layout: core, data, models, tools.


def _reskd_imports(path: str):
  return sorted({n for n in _imported_modules(path) if n.split(".")[0] in ("reskd_jax", "configs")})


def _layer(module: str) -> str:
  parts = module.split(".")
  if parts[0] == "configs":
    return "configs"
  if len(parts) > 1 and parts[1] in ("data", "models", "tools"):
    return parts[1]
  return "core"


# What each layer may import from the repository: the core the data path and the models,
# never a tool; tools import anything of the package; nothing imports configs/.
_ALLOWED = {
    "models": {"models", "errors"},
    "data": {"data", "errors", "fileio", "platforms"},
    "core": {"core", "data", "models"},
    "tools": {"core", "data", "models", "tools"},
}


def test_layers_import_only_what_they_may():
  problems = []
  for path in _modules("reskd_jax"):
    if path == "reskd_jax/__init__.py":
      continue
    layer = _layer(_module_name(path))
    for name in _reskd_imports(path):
      if name in ("reskd_jax", "reskd_jax.data", "reskd_jax.models", "reskd_jax.tools"):
        continue
      target = _layer(name)
      if target == "configs":
        problems.append(f"{path} imports {name}: the package never imports configs/")
      elif layer in ("models", "data") and target == "core":
        if name.split(".")[1] not in _ALLOWED[layer]:
          problems.append(f"{path} ({layer}) imports {name}")
      elif target not in _ALLOWED[layer]:
        problems.append(f"{path} ({layer}) imports {name} ({target})")
  assert not problems, "\n".join(problems)


def test_layer_rules_catch_a_core_module_importing_a_tool(tmp_path, monkeypatch):
  pkg = tmp_path / "reskd_jax"
  (pkg / "tools").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "tools" / "__init__.py").write_text("")
  (pkg / "tools" / "predict.py").write_text("")
  (pkg / "train.py").write_text("def f():\n  from reskd_jax.tools import predict\n"
                                "from configs import default\n")
  monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
  with pytest.raises(AssertionError) as info:
    test_layers_import_only_what_they_may()
  assert "reskd_jax/train.py (core) imports reskd_jax.tools.predict (tools)" in str(info.value)
  assert "never imports configs/" in str(info.value)


# ----------------------------------------------------------------------------
# Every `python -m` command the README and docs give runs.


def _python_m_modules():
  found = {}
  for path in _markdown_files():
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
      for module in re.findall(r"python -m ([A-Za-z_][\w.]*)", f.read()):
        found.setdefault(module, path)
  return found


# Runs each module as `python -m MODULE --help` does (runpy, as __main__, sys.argv set), all
# in one process: each module imports JAX or TensorFlow, which takes most of a process's
# start, so one process instead of one per module. Prints, per module, a marker line with
# its exit status, then its output.
_HELP_RUNNER = """
import contextlib, io, runpy, sys, traceback
for module in sys.argv[1:]:
  out = io.StringIO()
  sys.argv = [module, "--help"]
  code = 0
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    try:
      runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
      traceback.print_exc()
      code = 1
  print(f"\\n@@@ python -m {module} --help: exit {code}")
  print(out.getvalue())
"""


def test_every_python_m_command_in_the_docs_runs():
  """`python -m X --help` exits 0 with a usage line for each module the docs name."""
  modules = _python_m_modules()
  assert {"data_prep", "reskd_jax.tools.predict", "reskd_jax.tools.demo"} <= set(modules), modules
  names = [m for m in sorted(modules) if not m.rsplit(".", 1)[-1].startswith("_")]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-c", _HELP_RUNNER, *names], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  outputs = {}
  for part in proc.stdout.split("\n@@@ python -m ")[1:]:
    head, _, out = part.partition("\n")
    module, _, code = head.partition(" --help: exit ")
    outputs[module] = (int(code), out)
  assert sorted(outputs) == names, (sorted(outputs), proc.stdout[-3000:])
  failed = [f"python -m {m} --help (named in {modules[m]}): exit {code}\n{out[-1500:]}"
            for m, (code, out) in outputs.items() if code != 0 or "usage" not in out.lower()]
  assert not failed, "\n\n".join(failed)
