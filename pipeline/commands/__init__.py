"""The verbs of the ``timesenclip`` command line, one module per group, each verb's arguments next
to its handler; ``pipeline.cli`` puts them together."""
