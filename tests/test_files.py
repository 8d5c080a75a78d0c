"""Workers on one machine write the same cache file at once: both writes succeed and the file is whole."""

from __future__ import annotations

import threading

from autoaccel.util.files import write_atomically


def test_two_writers_of_one_file_at_once_both_succeed_and_it_ends_whole(tmp_path):
    path = tmp_path / "samples" / "reference.pt"
    both_writing = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def writer(text: str) -> None:
        def write(temporary):
            temporary.write_text(text[: len(text) // 2])
            both_writing.wait()  # each has a half-written temporary file at this point
            temporary.write_text(text)

        try:
            write_atomically(path, write)
        except BaseException as error:  # reported below, in the test thread
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(letter * 1000,)) for letter in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert path.read_text() in ("a" * 1000, "b" * 1000)
    assert [entry.name for entry in path.parent.iterdir()] == ["reference.pt"]  # no temporary file left behind


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    path = tmp_path / "recipe.yaml"

    def failing(temporary):
        temporary.write_text("half")
        raise OSError("disk full")

    try:
        write_atomically(path, failing)
    except OSError as error:
        assert "disk full" in str(error)
    else:
        raise AssertionError("the write's error must reach the caller")
    assert list(tmp_path.iterdir()) == []
