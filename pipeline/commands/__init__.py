"""The command line's verbs, arguments beside handlers. Uses every stage, lazily."""
