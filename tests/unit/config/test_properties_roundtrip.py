"""A .properties export reads back as the values it was made from, whatever the keys and values."""

from hypothesis import given
from hypothesis import strategies as st

from mezzo.config.formats import parse_properties, render_properties

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@given(st.dictionaries(text.filter(bool), text, max_size=8))
def test_render_then_parse_gives_the_values_back(values: dict[str, str]) -> None:
    assert parse_properties(render_properties(values)) == values


def test_a_key_starting_with_a_comment_character_is_not_read_as_a_comment() -> None:
    values = {"#hash": "1", "!bang": "2", "a#b": "3"}
    rendered = render_properties(values)
    assert "\\#hash=1\n" in rendered and "\\!bang=2\n" in rendered
    assert parse_properties(rendered) == values
