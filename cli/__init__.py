"""The ``lookalike`` command: one module per command group, all on one ``Settings`` built per invocation."""
