"""The stages: `run(config, out_dir) -> metrics` in one module each, registered in config.STAGES.

The CLI and the pipeline runner call the same function. Stage modules import torch and friends,
so they are imported only when a stage actually runs.
"""
