"""Test set-up: 8 CPU devices, a persistent compilation cache (one, locked, for all workers),
the e2e marks of modules that do not set them, the slow marks.

XLA_FLAGS must be set before jax is imported anywhere, hence here.
"""
import os

from helpers import xla_flags  # no jax import there

os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

from helpers import CACHE_DIR, CACHE_MAX_BYTES  # noqa: E402

# The cache of helpers.CACHE_ENV. Unlike the processes the tests start (which each compile
# the same ~180 small programs again), this process keeps what it compiled in memory: it
# writes only programs that took more than 0.5 s (writing every small one cost more than
# it saved).
jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
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


# Slow tests (marker slow): one process, but more than about 2.5 s each on the 2-core
# machine (a full-size network against its PyTorch reference, a train step sharded over 8
# devices, a compile for a TPU topology, a module's trained fixture). `make test-fast` leaves
# them out with the e2e tests; `make test` runs everything. Measured with `--durations`.
_SLOW = {
    "test_convert": {"test_cli_bad_file_exits_cleanly",
                     "test_mmaction_tsm_resnet50_matches_torch",
                     "test_torchvision_resnet_matches_torch"},
    "test_data_prep_beam": {"test_beam_direct_runner_equals_local_builder_and_converter"},
    "test_data_prep_nothing_lost": {"test_default_shard_count_gives_every_worker_a_shard"},
    "test_data_prep_tfds": {"test_repack_from_tfds_trains_like_the_converter"},
    "test_decode": {"test_pipeline_output_unchanged_by_crop_aware_decoding",
                    "test_unrolled_and_looped_decoding_agree"},
    "test_family_training": {"test_slowonly_sharded_reskd_step_with_feature_kd",
                             "test_swin_sharded_reskd_step_with_pixel_logit_kd"},
    "test_input_pipeline": {"test_frames_layout_gives_the_same_eval_views",
                            "test_frames_layout_gives_the_same_training_batches",
                            "test_parallel_reads_give_the_same_batches",
                            "test_resumed_stream_equals_uninterrupted_stream",
                            "test_train_deterministic_per_seed",
                            "test_train_tsn_multiscale_end_to_end"},
    "test_labels": {"test_inference_reads_numbered_class_lists"},
    "test_losses": {"test_gradient_reaches_student_never_teacher"},
    "test_main": {"test_checkpoint_that_does_not_fit_is_one_line",
                  "test_tensorflow_is_quiet_from_its_first_import_in_every_entry_point"},
    "test_models": {"test_bfloat16_compute", "test_output_shapes_every_depth",
                    "test_rank4_input_with_num_segments",
                    "test_tiny_model_runs_and_dict_outputs_agree"},
    "test_optim": {"test_adamw_decays_kernels_only_with_backbone_multiplier"},
    "test_plan": {"test_bad_topology_and_batch_are_one_line",
                  "test_largest_batch_prediction_against_direct_compiles",
                  "test_plan_of_tiny_reskd_single_and_multi_host",
                  "test_plan_without_libtpu_stops_with_one_line"},
    "test_profile_plots": {"test_erf_and_attention_figures", "test_run_profile_writes_rows",
                           "test_visualize_cli_from_saved_variables"},
    "test_registry": {"test_runtime_imports_no_torch"},
    "test_remat": {"test_remat_gives_the_same_variables_loss_and_gradients",
                   "test_remat_puts_every_block_under_a_checkpoint",
                   "test_remat_train_step_equals_plain_with_a_teacher"},
    "test_robust_training": {
                             "test_divergence_stops_with_exit_3_and_keeps_the_last_good_checkpoint",
                             "test_flipped_bytes_in_the_newest_checkpoint_resume_from_the_previous",
                             "test_reskd_takes_the_teacher_architecture_from_meta_json"},
    "test_shared_rules": {"test_predict_num_frames_sets_a_dense_models_clip_len"},
    "test_slowonly": {"test_matches_mmaction2_transcription"},
    "test_structure": {"test_runtime_package_imports_no_torch"},
    "test_swin": {"test_checkpoint_file_round_trip",
                  "test_cli_converts_a_swin_t_file_and_refuses_a_resnet_file",
                  "test_gflops_match_table3_and_attention_is_separate",
                  "test_return_dict_contract_and_stochastic_depth",
                  "test_swin_s_matches_torch_reference",
                  "test_tiny_matches_torch_with_shrunk_windows_odd_maps_and_resize"},
    "test_train_step": {"test_baseline_mode_has_no_kd_and_no_teacher",
                        "test_learning_reduces_kd_term_tenfold",
                        "test_param_groups_and_lr_schedule",
                        "test_sharded_step_equals_device_by_device_average",
                        "test_step_compiles_once",
                        "test_sync_bn_step_equals_single_device_whole_batch",
                        "test_teacher_is_bit_identical_after_many_steps_and_state_is_donated"},
    "test_training_faults": {"test_a_training_shard_deleted_mid_run_is_named"},
    "test_use": {"test_export_then_load_matches_the_model", "test_predict_video_files_json",
                 "test_visualize_from_video_files"},
}


def pytest_collection_modifyitems(config, items):
  """The e2e marks of _E2E and the slow marks of _SLOW."""
  del config
  for item in items:
    module = os.path.splitext(os.path.basename(item.nodeid.split("::")[0]))[0]
    name = getattr(item, "originalname", item.name)
    if name in _E2E.get(module, ()):
      item.add_marker(pytest.mark.e2e)
    if name in _SLOW.get(module, ()):
      item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A tiny data set and teachers for `:tiny` runs (helpers.make_tiny_setup), one per module."""
  from helpers import make_tiny_setup
  return make_tiny_setup(tmp_path_factory.mktemp("tiny"))
