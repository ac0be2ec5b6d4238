"""The ack window releases PUBACKs in receive order, each once, whatever order work finishes in."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.sources.acks import AckWindow


def test_in_order_completion_releases_everything() -> None:
    window = AckWindow()
    seqs = [window.register(pid) for pid in (7, 8, 9)]
    for seq in seqs:
        window.complete(seq)
    assert window.release() == [7, 8, 9]
    assert len(window) == 0
    assert window.release() == []


def test_a_finished_message_waits_behind_an_unfinished_one() -> None:
    window = AckWindow()
    first, second, third = (window.register(pid) for pid in (1, 2, 3))
    window.complete(third)
    window.complete(second)
    assert window.release() == []
    window.complete(first)
    assert window.release() == [1, 2, 3]


def test_completing_twice_or_after_release_changes_nothing() -> None:
    window = AckWindow()
    first = window.register(10)
    window.complete(first)
    window.complete(first)
    assert window.release() == [10]
    window.complete(first)
    second = window.register(11)
    assert window.release() == []
    window.complete(second)
    assert window.release() == [11]


def test_packet_ids_may_repeat_once_released() -> None:
    """The broker reuses a packet id as soon as it was acked; the window keys on sequence."""
    window = AckWindow()
    for _ in range(3):
        seq = window.register(1)
        window.complete(seq)
        assert window.release() == [1]


def test_long_backlogs_compact_without_losing_place() -> None:
    window = AckWindow()
    ids = [n % 65535 + 1 for n in range(30_000)]
    seqs = [window.register(pid) for pid in ids[:10_000]]
    for seq in seqs[:6000]:
        window.complete(seq)
    assert window.release() == ids[:6000]  # a large released prefix is dropped in bulk
    seqs += [window.register(pid) for pid in ids[10_000:]]
    for seq in reversed(seqs[6000:]):
        window.complete(seq)
        window.complete(seqs[0])  # long released: ignored
    assert window.release() == ids[6000:]
    assert len(window) == 0


@given(
    st.lists(st.integers(1, 65535), max_size=300).flatmap(
        lambda ids: st.tuples(
            st.just(ids),
            st.permutations(range(len(ids))),
            st.lists(st.booleans(), min_size=len(ids), max_size=len(ids)),
        )
    )
)
def test_any_completion_order_acks_in_receive_order_exactly_once(
    case: tuple[list[int], list[int], list[bool]],
) -> None:
    packet_ids, order, release_after = case
    window = AckWindow()
    seqs = [window.register(pid) for pid in packet_ids]
    done: set[int] = set()
    released: list[int] = []
    for index, release_now in zip(order, release_after, strict=True):
        window.complete(seqs[index])
        done.add(index)
        if release_now:
            released += window.release()
            # Exactly the longest done prefix has gone out, nothing beyond it.
            prefix = 0
            while prefix in done:
                prefix += 1
            assert released == packet_ids[:prefix]
    released += window.release()
    assert released == packet_ids
    assert len(window) == 0


def test_registering_many_at_once_numbers_them_in_order() -> None:
    window = AckWindow()
    window.register(5)
    first = window.register_many([10, 11, 12])
    assert first == 1
    for seq in (first + 2, first, 0):
        window.complete(seq)
    assert window.release() == [5, 10]
    window.complete(first + 1)
    assert window.release() == [11, 12]
    assert window.register_many([]) == first + 3 and len(window) == 0
