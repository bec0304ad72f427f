"""Class arguments of the reclassify command: a built-in set name or custom class names."""

import pytest

from encoder.prompts import ClassSpec, class_set
from pipeline.store.reclassify import parse_classes


@pytest.mark.parametrize("text", ["lc", "land_cover", " Land-Cover ", "LC"])
def test_set_names_and_aliases_give_the_set(text):
    classes = parse_classes(text)
    assert len(classes) == 8 and classes == class_set("land_cover")


def test_comma_separated_names_give_custom_classes():
    assert parse_classes("vineyard, olive grove") == [
        ClassSpec("vineyard"),
        ClassSpec("olive grove"),
    ]
