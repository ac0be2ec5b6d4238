"""Walking a hash chain: each kind of tampering is named at the row where it happened."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from gateway.trail_verify import GENESIS, Link, find_breaks


def chain(contents: list[bytes]) -> list[Link]:
    links, prev = [], GENESIS
    for number, content in enumerate(contents, 1):
        digest = hashlib.sha256(prev + content).digest()
        links.append(Link(number, prev, digest, digest))
        prev = digest
    return links


def problems(links: list[Link]) -> set[tuple[int, str]]:
    return {(b.number, b.problem.split(":")[0]) for b in find_breaks("t", links)}


CONTENTS = st.lists(st.binary(max_size=8), min_size=3, max_size=30)


@given(CONTENTS)
def test_an_intact_chain_has_no_breaks(contents: list[bytes]) -> None:
    assert problems(chain(contents)) == set()


@given(CONTENTS, st.data())
def test_an_edited_row_is_named(contents: list[bytes], data: st.DataObject) -> None:
    links = chain(contents)
    i = data.draw(st.integers(0, len(links) - 1))
    links[i] = links[i]._replace(computed=b"other")
    assert problems(links) == {(i + 1, "altered")}


@given(CONTENTS, st.data())
def test_a_deleted_row_is_named_by_the_row_after_it(
    contents: list[bytes], data: st.DataObject
) -> None:
    links = chain(contents)
    i = data.draw(st.integers(0, len(links) - 2))
    del links[i]
    after = f"row {i}" if i else "the start"
    assert problems(links) == {(i + 2, f"does not follow {after}")}


@given(CONTENTS, st.data())
def test_an_inserted_row_is_named(contents: list[bytes], data: st.DataObject) -> None:
    links = chain(contents)
    i = data.draw(st.integers(1, len(links) - 1))
    forged = data.draw(st.binary(min_size=32, max_size=32))
    links.insert(i, Link(1000, forged, forged, b"whatever"))
    assert problems(links) == {(1000, "inserted out of band")}


def test_a_row_inserted_at_the_end_is_named() -> None:
    links = chain([b"a", b"b"])
    links.append(Link(3, None, None, b"x"))
    assert problems(links) == {(3, "does not follow row 2"), (3, "altered")}
