"""Hypothesis strategies for JSON values, biased towards what stresses a Tauq encoder."""

from __future__ import annotations

from hypothesis import strategies as st

# Strings a bare-word rule could get wrong: keywords, numbers, directives, delimiters.
TRICKY_STRINGS = st.sampled_from(
    ["", " ", "true", "false", "null", "True", "NaN", "inf", "-Infinity", "1", "-0", "1e5", ".5", "1.",
     "+1", "00", "0x10", "---", "--", "-", "!def", "!use", "#", "# x", "a#b", "a:b", "a;b", "a,b", "[", "}",
     '"', "\\", "\\n", "\n", "\r\n", "\t", "\x00", "a b", "x.y", "key@host", "a/b", "a-b", "_", "é", "日本語",
     "\u2028", "\u00a0", "\x0b", "\x1c", "²", "Ⅻ"]
)
TEXT = st.one_of(st.text(max_size=20), TRICKY_STRINGS)
NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,7}", fullmatch=True)

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)


def json_values(max_leaves: int = 40) -> st.SearchStrategy:
    return st.recursive(
        SCALARS,
        lambda children: st.one_of(
            st.lists(children, max_size=6),
            st.dictionaries(st.one_of(TEXT, NAMES), children, max_size=6),
            records(children),
        ),
        max_leaves=max_leaves,
    )


def records(values: st.SearchStrategy) -> st.SearchStrategy:
    """Runs of uniform objects (same keys, same order): what `!def`/`!use` schemas carry."""
    return st.lists(st.one_of(NAMES, TEXT), min_size=1, max_size=4, unique=True).flatmap(
        lambda keys: st.lists(st.fixed_dictionaries({k: values for k in keys}), min_size=2, max_size=5)
    )
