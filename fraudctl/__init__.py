"""The composition root of the ``fraudctl`` command: the CLI, the main job (``up``) and the benchmark."""
