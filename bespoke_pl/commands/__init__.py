"""The command line, one module per subcommand: ``fit`` (LightningCLI), ``generate``, ``evaluate``,
``roundtrip``, ``check-data``, ``tiny``, ``pretrain-tiny`` and ``from-kohya`` (its mapping:
:mod:`bespoke_pl.kohya`). Each is thin: it parses, checks the paths and calls into the packages below.
"""
