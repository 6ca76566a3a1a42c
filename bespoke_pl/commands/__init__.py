"""The command line, one module per subcommand: ``fit`` (LightningCLI), ``generate``, ``evaluate``,
``roundtrip``, ``check-data``, ``tiny`` and ``pretrain-tiny``.
"""
