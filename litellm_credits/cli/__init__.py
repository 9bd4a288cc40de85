"""The ``litellm-credits`` command: ledger, keys and operations subcommands."""
