"""Which lines of the engine's answer tell a restore that every image is loaded and tagged."""

from __future__ import annotations

from runnerkeep.cache.restore import loaded_lines

ID_A = "sha256:" + "a" * 64
ID_B = "sha256:" + "b" * 64


def entry(*images: tuple[str, list[str]]) -> dict:
    return {"images": [{"id": image_id, "tags": tags} for image_id, tags in images]}


def test_a_line_per_tag_as_the_engine_spells_it():
    lines = loaded_lines(entry((ID_A, ["app:1", "docker.io/library/app:2"]), (ID_B, ["b:1"])))
    assert lines == {"Loaded image: app:1", "Loaded image: app:2", "Loaded image: b:1"}


def test_images_without_tags_are_said_by_id():
    assert loaded_lines(entry((ID_A, []), (ID_B, []))) == {
        f"Loaded image ID: {ID_A}",
        f"Loaded image ID: {ID_B}",
    }


def test_some_tagged_and_some_not_means_the_whole_answer():
    # The engine says nothing of an untagged image when another has a tag.
    assert loaded_lines(entry((ID_A, ["app:1"]), (ID_B, []))) == set()


def test_a_tag_named_twice_means_the_whole_answer():
    assert loaded_lines(entry((ID_A, ["app:1"]), (ID_B, ["docker.io/library/app:1"]))) == set()
