"""The error every bad training input raises: what is wrong, naming the file or flag, and the fix."""


class TrainError(ValueError):
    """A training run refused before its first step (the CLI prints it and exits 2)."""
