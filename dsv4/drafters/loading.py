"""The old path of dsv4.io.drafter_checkpoint (drafter checkpoints are read beside where they are written)."""

from dsv4.io.drafter_checkpoint import DrafterLoadError, LoadedDrafter, check_target, checkpoint_dir, load_drafter  # noqa: F401,E501
