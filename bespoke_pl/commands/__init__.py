"""The command line, one module per subcommand: ``fit`` (LightningCLI), ``generate``, ``evaluate``,
``roundtrip``, ``check-data``, ``tiny``, ``pretrain-tiny`` and ``from-kohya`` (its mapping: ``kohya/``).
"""
