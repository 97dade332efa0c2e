"""``pack`` reuses Packers: it must give packb's bytes whatever came before, on any thread."""

from __future__ import annotations

import threading
from typing import Any

import msgpack
import pytest

from zmqcomm.wire import packing
from zmqcomm.wire.packing import pack


class Point:
    def __init__(self, x: int, inner: Any = None) -> None:
        self.x, self.inner = x, inner


def nested_default(obj: Any) -> Any:
    # Packs again from inside a pack, as PBFT's nested messages do.
    if isinstance(obj, Point):
        return msgpack.ExtType(1, pack([obj.x, obj.inner], nested_default))
    raise TypeError(f"cannot pack {type(obj).__name__}")


def reference(value: Any, default: Any = None) -> bytes:
    return msgpack.packb(value, default=default, use_bin_type=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "value",
    [None, 0, -1, 2**63, 1.5, "text", "é", b"\x00bytes", [1, [2, [3]]], {"k": b"v"}, []],
)
def test_same_bytes_as_packb(value: Any) -> None:
    assert pack(value) == reference(value)
    assert pack(value) == reference(value)  # the second call runs on a reused Packer


def test_a_default_hook_that_packs_again_gets_its_own_packer() -> None:
    value = [Point(1, Point(2, Point(3))), b"tail"]
    assert pack(value, nested_default) == reference(value, nested_default)


def test_a_failed_pack_leaves_nothing_behind_for_the_next() -> None:
    with pytest.raises(TypeError):
        pack([1, object()])
    with pytest.raises(TypeError):
        pack([Point(1), object()], nested_default)
    assert pack([1, 2]) == reference([1, 2])
    assert pack([Point(4)], nested_default) == reference([Point(4)], nested_default)


def test_a_packer_that_wrote_a_big_value_is_not_kept() -> None:
    def own_default(obj: Any) -> Any:  # a hook of its own: a pool no other test touches
        raise TypeError(type(obj).__name__)

    idle = packing._idle
    assert pack(b"small", own_default) == reference(b"small")
    assert len(idle[own_default]) == 1
    big = b"x" * (2 << 20)  # its grown buffer would stay with the Packer for good
    assert pack([big], own_default) == reference([big])
    assert idle[own_default] == []
    assert pack(b"small", own_default) == reference(b"small")


def test_threads_packing_at_once_each_get_their_own_bytes() -> None:
    failures: list[str] = []
    start = threading.Barrier(4)

    def worker(tag: int) -> None:
        start.wait()
        for index in range(2000):
            value = [tag, index, Point(tag, [index] * (index % 7))]
            if pack(value, nested_default) != reference(value, nested_default):
                failures.append(f"thread {tag}, item {index}")

    threads = [threading.Thread(target=worker, args=(tag,)) for tag in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
