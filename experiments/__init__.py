"""The user-facing layer: config schema, runner, CLI, validation and benchmark scripts."""
