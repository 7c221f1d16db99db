"""Programs a user runs on trained models and for the paper's figures.

Each module with a command line runs as `python -m reskd_jax.tools.<name>`: `predict`,
`export`, `convert_weights`, `flops`, `visualize`, `tradeoff_figure`, `demo`. `plan` and
`profiling` are `main.py --mode=plan` and `--mode=profile`. Tools import the core; the
core never imports a tool.
"""
