"""Test set-up: 8 CPU devices, a persistent compilation cache (one per pytest-xdist worker),
the e2e marks of modules that do not set them.

XLA_FLAGS must be set before jax is imported anywhere, hence here.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

from helpers import CACHE_DIR  # noqa: E402

jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# End-to-end tests (marker e2e) of modules that do not mark them themselves: data_prep and
# other programs run as processes. Modules mark their own with @pytest.mark.e2e.
_E2E = {
    "test_data_prep_nothing_lost": {"test_concurrent_conversions_check_classes_before_converting",
                                    "test_workers_exit_when_the_parent_is_killed"},
    "test_data_prep_real_world": {"test_a_second_converter_on_the_same_split_is_refused",
                                  "test_ctrl_c_prints_only_the_one_line",
                                  "test_disk_full_gives_one_line_and_no_partial_file"},
    "test_data_prep_robust": {"test_cli_exit_status_and_one_line_message_in_a_subprocess",
                              "test_killed_conversion_resumes_to_identical_files"},
    "test_use": {"test_readme_own_videos_recipe_runs_on_generated_videos"},
    "test_structure": {"test_every_python_m_command_in_the_docs_runs"},
}


def pytest_collection_modifyitems(config, items):
  """The e2e marks of _E2E."""
  del config
  for item in items:
    module = os.path.splitext(os.path.basename(item.nodeid.split("::")[0]))[0]
    if getattr(item, "originalname", item.name) in _E2E.get(module, ()):
      item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A tiny data set and teachers for `:tiny` runs (helpers.make_tiny_setup), one per module."""
  from helpers import make_tiny_setup
  return make_tiny_setup(tmp_path_factory.mktemp("tiny"))
