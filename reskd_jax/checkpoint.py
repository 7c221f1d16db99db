"""Old name of :mod:`reskd_jax.checkpoints` (variables directories and train checkpoints)."""

from reskd_jax.checkpoints import *  # noqa: F401,F403
from reskd_jax.checkpoints import (COLLECTIONS, META_FILE, ORBAX_DIR,  # noqa: F401
                                   VARIABLES_SUBDIR, load_metadata, load_variables,
                                   merge_pretrained, resolve_variables_dir, save_variables)
