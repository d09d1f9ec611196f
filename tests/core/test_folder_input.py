"""A folder given to the CLI stands for the photos in it; files named one by one stay as strict as an
upload. The selection is :func:`sharpml.intake.select_uploads`; ``process`` and ``validate`` share it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sharpml.contract import EXIT_OK, EXIT_QUALITY_GATE, EXIT_REJECTED
from sharpml.intake import PHOTO_EXTENSIONS, Upload, select_uploads, validate

from .photos import heic_bytes, jpeg_bytes, photo_set, png_bytes, upright_pattern, write

#: What a published data set or a phone export keeps beside its photos.
EXTRAS = {"README.txt": b"scene captured 2026-01-02\n", "K.txt": b"1000 0 320\n0 1000 240\n0 0 1\n"}


def dataset_folder(root: Path) -> Path:
    """Six photos (upper- and mixed-case extensions among them) and everything that is not one."""
    folder = root / "scene"
    photo_set(folder, 3)  # IMG_0000.jpg .. IMG_0002.jpg
    write(folder / "IMG_0003.JPG", jpeg_bytes(upright_pattern()))
    write(folder / "IMG_0004.Png", png_bytes(upright_pattern()))
    write(folder / "IMG_0005.HEIC", heic_bytes(upright_pattern()))
    for name, data in EXTRAS.items():
        write(folder / name, data)
    write(folder / ".DS_Store", b"\x00\x00\x00\x01Bud1")
    write(folder / "._IMG_0000.jpg", b"\x00\x05\x16\x07AppleDouble")  # a macOS resource fork
    write(folder / "LICENSE", b"CC-BY 4.0\n")
    photo_set(folder / "images_2", 5)  # the same scene downscaled, as data sets ship it
    return folder


PHOTOS = ["IMG_0000.jpg", "IMG_0001.jpg", "IMG_0002.jpg", "IMG_0003.JPG", "IMG_0004.Png", "IMG_0005.HEIC"]
SKIPPED = {
    ".DS_Store": "hidden",
    "._IMG_0000.jpg": "hidden",
    "images_2": "a folder",
    "K.txt": "not a photo (.txt)",
    "LICENSE": "not a photo (no extension)",
    "README.txt": "not a photo (.txt)",
}


def test_the_extensions_are_intakes_own() -> None:
    assert sorted(PHOTO_EXTENSIONS) == [".heic", ".heif", ".jpeg", ".jpg", ".png"]


def test_a_folder_offers_its_photos_and_names_the_rest(tmp_path: Path) -> None:
    folder = dataset_folder(tmp_path)
    selection = select_uploads([folder])
    assert [u.name for u in selection.uploads] == PHOTOS
    assert all(u.path == folder / u.name for u in selection.uploads)
    skipped = {Path(s.name).name: s.reason for s in selection.skipped}
    assert skipped.keys() == SKIPPED.keys()
    for name, reason in SKIPPED.items():
        assert skipped[name].startswith(reason), (name, skipped[name])
    assert all(s.name.startswith(str(folder)) for s in selection.skipped)
    assert validate(selection.uploads) == []


def test_file_arguments_are_never_filtered(tmp_path: Path) -> None:
    folder = dataset_folder(tmp_path)
    named = [folder / "README.txt", folder / ".DS_Store", folder / "IMG_0000.jpg"]
    selection = select_uploads(named)
    assert selection.uploads == [Upload(p.name, p) for p in named]
    assert selection.skipped == []


@pytest.mark.parametrize("command", ["validate", "process"])
def test_cli_takes_the_photos_of_a_folder_and_names_what_it_skipped(
    run, tmp_path: Path, command: str
) -> None:
    folder = dataset_folder(tmp_path)
    if command == "validate":
        result = run("validate", str(folder))
        assert result.exit_code == EXIT_OK, result.output
        assert "6 photos would be accepted" in result.output
    else:
        # Six photos pass intake and are stored; the quality gate then turns down these unrelated
        # random pictures (within a second), which is not this test's business.
        result = run("process", str(folder), "-o", str(tmp_path / "x.splat"), "--max-image-size", "200")
        assert result.exit_code == EXIT_QUALITY_GATE, result.output
        assert "6 photos accepted" in result.output
        jobs = list((tmp_path / "data" / "jobs").iterdir())
        assert len(jobs) == 1 and len(list((jobs[0] / "images").iterdir())) == 6
    assert f"skipped {len(SKIPPED)} folder entries (not photos):" in result.output
    for name, reason in SKIPPED.items():
        assert f"  {folder / name}: {reason}" in result.output
    assert "problem" not in result.output


@pytest.mark.parametrize("command", ["validate", "process"])
def test_a_folder_whose_photos_break_a_rule_still_fails_naming_the_file(
    run, tmp_path: Path, command: str
) -> None:
    folder = tmp_path / "scene"
    photo_set(folder, 5)
    write(folder / "IMG_0042.jpg", png_bytes(upright_pattern()))
    write(folder / "README.txt", EXTRAS["README.txt"])
    args = ["-o", str(tmp_path / "x.splat")] if command == "process" else []
    result = run(command, str(folder), *args)
    assert result.exit_code == EXIT_REJECTED, result.output
    assert "✘ 1 problem(s); nothing was stored:" in result.output
    assert "IMG_0042.jpg: content is PNG but extension says JPEG" in result.output
    assert f"{folder / 'README.txt'}: not a photo (.txt)" in result.output
    assert not (tmp_path / "x.splat").exists()
    assert not (tmp_path / "data" / "jobs").exists() or list((tmp_path / "data" / "jobs").iterdir()) == []


def test_a_folder_of_only_bad_photos_fails_on_count_and_names_each(run, tmp_path: Path) -> None:
    folder = tmp_path / "scene"
    folder.mkdir()
    write(folder / "fake.JPEG", png_bytes(upright_pattern()))
    write(folder / "K.txt", EXTRAS["K.txt"])
    result = run("validate", str(folder))
    assert result.exit_code == EXIT_REJECTED
    assert "1 photos uploaded; at least 5 are needed" in result.output
    assert "fake.JPEG: content is PNG but extension says JPEG" in result.output
    assert "K.txt: has extension" not in result.output  # skipped, not a problem


@pytest.mark.parametrize("command", ["validate", "process"])
def test_explicit_files_stay_as_strict_as_an_upload(run, tmp_path: Path, command: str) -> None:
    photos = photo_set(tmp_path / "scene", 5)
    readme = write(tmp_path / "scene" / "README.txt", EXTRAS["README.txt"])
    args = ["-o", str(tmp_path / "x.splat")] if command == "process" else []
    result = run(command, *map(str, photos), str(readme), *args)
    assert result.exit_code == EXIT_REJECTED, result.output
    assert "README.txt: has extension '.txt'; only .jpg, .jpeg, .png, .heic and .heif are accepted" in (
        result.output
    )
    assert "skipped" not in result.output


def test_symlinks_are_refused_not_followed(run, tmp_path: Path) -> None:
    folder = tmp_path / "scene"
    photos = photo_set(folder, 5)
    outside = photo_set(tmp_path / "outside", 1)[0]
    (folder / "IMG_0099.jpg").symlink_to(outside)
    (folder / "notes.txt").symlink_to(tmp_path / "nowhere")
    result = run("validate", str(folder))
    assert result.exit_code == EXIT_REJECTED
    assert "IMG_0099.jpg: is a symbolic link; upload the photo itself" in result.output
    assert f"{folder / 'notes.txt'}: a symbolic link (not followed)" in result.output
    # A folder argument that is itself a link is refused as one, not read through.
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "outside")
    os.remove(folder / "IMG_0099.jpg")
    result = run("validate", str(link), *map(str, photos[:4]))
    assert result.exit_code == EXIT_REJECTED
    assert "link: is a symbolic link; upload the photo itself" in result.output


def test_a_symlinked_folder_inside_is_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "scene"
    photo_set(folder, 5)
    (folder / "more").symlink_to(tmp_path, target_is_directory=True)
    selection = select_uploads([folder])
    assert len(selection.uploads) == 5
    assert [(Path(s.name).name, s.reason) for s in selection.skipped] == [
        ("more", "a symbolic link (not followed)")
    ]


def test_a_long_list_of_skipped_entries_is_cut_short(run, tmp_path: Path) -> None:
    folder = tmp_path / "scene"
    photo_set(folder, 5)
    for i in range(25):
        write(folder / f"depth_{i:02d}.npy", b"\x93NUMPY")
    result = run("validate", str(folder))
    assert result.exit_code == EXIT_OK, result.output
    assert "skipped 25 folder entries (not photos):" in result.output
    assert f"{folder / 'depth_19.npy'}: not a photo (.npy)" in result.output
    assert "depth_20.npy" not in result.output
    assert "  ... and 5 more" in result.output
