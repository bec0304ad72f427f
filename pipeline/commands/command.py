"""One verb of the command line: its name, one-line help, arguments and handler."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """A verb; ``arguments`` adds its options to its parser, ``handler`` runs it (exit status)."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    handler: Handler

    def add_to(self, verbs: argparse._SubParsersAction) -> None:
        """Add this verb's parser to the sub-parsers of the ``timesenclip`` parser."""
        self.arguments(verbs.add_parser(self.name, help=self.help))


def command(
    name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]
) -> Callable[[Handler], Command]:
    """Decorate a handler into the :class:`Command` ``name``."""

    def make(handler: Handler) -> Command:
        return Command(name, help, arguments, handler)

    return make
