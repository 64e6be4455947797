"""The ``routerlens`` command: subcommands (``commands``), argument checks and one-line errors (``checks``)."""


def main(argv=None) -> int:
    """Entry point of ``routerlens`` (see :func:`routerlens_interp.cli.commands.main`)."""
    from .commands import main as _main

    return _main(argv)
