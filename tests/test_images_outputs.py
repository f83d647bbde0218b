"""edgevae.runtime.images (reading, grids) and edgevae.runtime.outputs (safe writes)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import BAD_INPUT_KINDS, is_root, make_bad_input, synthetic_images, write_pngs
from edgevae.runtime import images as images_mod
from edgevae.runtime import outputs
from edgevae.runtime.errors import InputError, OutputError
from edgevae.runtime.images import find_image_files, grid, load_image, load_npy, read_images, to_pil

GRAY = (1, 28, 28)
RGB = (3, 28, 28)


def leftovers(folder: Path) -> list[str]:
    """Every file under ``folder`` (temp files included), relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- reading images -----------------------------------------------------------------------------


def test_gray_png_round_trips_exactly(tmp_path: Path) -> None:
    images = synthetic_images(3)
    paths = write_pngs(images, tmp_path)
    for image, path in zip(images, paths):
        got = load_image(path, GRAY)
        assert got.dtype == np.uint8 and got.shape == GRAY
        np.testing.assert_array_equal(got, image)


def test_rgb_with_equal_channels_counts_as_gray_and_alpha_is_dropped(tmp_path: Path) -> None:
    image = synthetic_images(1, seed=2)[0, 0]
    rgba = np.stack([image, image, image, np.full_like(image, 100)], axis=-1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.stack([image, np.full_like(image, 9)], -1), mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png", GRAY)[0], image)
    np.testing.assert_array_equal(load_image(tmp_path / "la.png", GRAY)[0], image)


def test_rgb_model_reads_colour_and_refuses_gray_without_resize(tmp_path: Path) -> None:
    colour = synthetic_images(1, seed=3, shape=RGB)[0]
    Image.fromarray(colour.transpose(1, 2, 0), mode="RGB").save(tmp_path / "c.png")
    np.testing.assert_array_equal(load_image(tmp_path / "c.png", RGB), colour)
    [gray_path] = write_pngs(synthetic_images(1, seed=4), tmp_path / "g")
    with pytest.raises(InputError, match=r"1 channel\(s\) \(gray\), the model expects 3 \(RGB\)"):
        load_image(gray_path, RGB)
    converted = load_image(gray_path, RGB, resize=True)
    assert converted.shape == RGB
    np.testing.assert_array_equal(converted[0], converted[1])
    np.testing.assert_array_equal(converted[1], converted[2])


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path: Path) -> None:
    values = np.zeros((28, 28), np.uint16)
    values[:, 14:] = 65535
    values[0, 0] = 257 * 100
    Image.fromarray(values).save(tmp_path / "deep.png")
    got = load_image(tmp_path / "deep.png", GRAY)[0]
    assert got[0, 0] == 100 and got[5, 20] == 255 and got[5, 5] == 0


def test_resize_fits_any_size_to_the_model(tmp_path: Path) -> None:
    wide = np.zeros((30, 60), np.uint8)
    wide[:, 15:45] = 200  # the centre square survives a centre crop
    Image.fromarray(wide, mode="L").save(tmp_path / "wide.jpg", quality=95)
    with pytest.raises(InputError, match="60x30 pixels, the model expects 28x28; pass --resize"):
        load_image(tmp_path / "wide.jpg", GRAY)
    fitted = load_image(tmp_path / "wide.jpg", GRAY, resize=True)
    assert fitted.shape == GRAY
    assert fitted[0, 14, 14] > 180 and fitted.mean() > 150


@pytest.mark.parametrize("kind", BAD_INPUT_KINDS)
def test_read_images_refuses_bad_inputs(kind: str, tmp_path: Path) -> None:
    path, phrases = make_bad_input(kind, tmp_path)
    with pytest.raises(InputError) as caught:
        read_images([path], GRAY)
    message = str(caught.value)
    assert "\n" not in message
    for phrase in phrases:
        assert phrase in message


@pytest.mark.parametrize("kind", ["wrong_size", "wrong_channels"])
def test_resize_fixes_shape_problems(kind: str, tmp_path: Path) -> None:
    path, _ = make_bad_input(kind, tmp_path)
    images, names = read_images([path], GRAY, resize=True)
    assert images.shape == (1, *GRAY) and images.dtype == np.uint8
    assert names == [path.stem]


def test_folder_given_as_image_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a folder"):
        load_image(tmp_path, GRAY)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [path] = write_pngs(synthetic_images(1), tmp_path)
    path.chmod(0)
    try:
        if is_root():
            # chmod does not stop root; the file must then simply be read.
            assert load_image(path, GRAY).shape == GRAY
        else:
            with pytest.raises(InputError, match="permission denied"):
                load_image(path, GRAY)
    finally:
        path.chmod(0o644)

    # The same mapping, for every user: the OS refusing to open the file.
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images_mod.Image, "open", refuse)
    with pytest.raises(InputError, match=f"{path.name}: permission denied"):
        load_image(path, GRAY)
    np.save(tmp_path / "x.npy", np.zeros(3, np.uint8))
    monkeypatch.setattr(images_mod.np, "load", refuse)
    with pytest.raises(InputError, match="x.npy: permission denied"):
        load_npy(tmp_path / "x.npy")


def test_read_images_gathers_files_folders_and_arrays_in_order(tmp_path: Path) -> None:
    images = synthetic_images(7, seed=11)
    write_pngs(images[:2], tmp_path / "tree" / "a")
    write_pngs(images[2:4], tmp_path / "tree" / "b" / "deeper")
    (tmp_path / "tree" / "notes.txt").write_text("ignored")
    single = write_pngs(images[4:5], tmp_path / "single")[0]
    np.save(tmp_path / "batch.npy", images[5:7])
    np.save(tmp_path / "one.npy", images[6])

    got, names = read_images([single, tmp_path / "tree", tmp_path / "batch.npy", tmp_path / "one.npy"], GRAY)
    want = np.concatenate([images[4:5], images[0:4], images[5:7], images[6:7]])
    np.testing.assert_array_equal(got, want)
    assert names == ["000", "a_000", "a_001", "b_deeper_000", "b_deeper_001", "batch-0000", "batch-0001", "one-0000"]
    assert [p.name for p in find_image_files(tmp_path / "tree")] == ["000.png", "001.png", "000.png", "001.png"]


def test_read_images_needs_inputs() -> None:
    with pytest.raises(InputError, match="no input images"):
        read_images([], GRAY)


def test_npy_without_images_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "none.npy", np.zeros((0, *GRAY), np.uint8))
    with pytest.raises(InputError, match="none.npy: holds no images"):
        read_images([tmp_path / "none.npy"], GRAY)


def test_npy_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="objects.npy: not a valid .npy"):
        load_npy(tmp_path / "objects.npy")


# -- grids --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, columns, rows_cols", [(1, None, (1, 1)), (4, None, (2, 2)), (5, None, (2, 3)),
                                                   (10, None, (3, 4)), (6, 6, (1, 6)), (7, 2, (4, 2))])
def test_grid_layout(n: int, columns: int | None, rows_cols: tuple[int, int]) -> None:
    images = synthetic_images(n, seed=n)
    out = grid(images, columns)
    rows, cols = rows_cols
    p = images_mod.GRID_PADDING
    assert out.dtype == np.uint8
    assert out.shape == (1, rows * (28 + p) + p, cols * (28 + p) + p)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        y, x = p + r * (28 + p), p + c * (28 + p)
        np.testing.assert_array_equal(out[:, y : y + 28, x : x + 28], image)
    # Padding stripes are the pad value.
    assert (out[:, :p, :] == images_mod.GRID_PAD_VALUE).all()
    assert (out[:, :, :p] == images_mod.GRID_PAD_VALUE).all()


def test_to_pil_modes() -> None:
    assert to_pil(synthetic_images(1)[0]).mode == "L"
    colour = synthetic_images(1, shape=RGB)[0]
    pil = to_pil(colour)
    assert pil.mode == "RGB" and pil.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(pil).transpose(2, 0, 1), colour)


# -- writing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kind", [("a.png", "grid"), ("A.PNG", "grid"), ("z.npy", "npy"),
                                        ("out", "folder"), ("out.d/", "folder"), ("pic.jpg", "folder")])
def test_output_kind(name: str, kind: str) -> None:
    assert outputs.output_kind(name) == kind


def test_atomic_write_never_overwrites_without_force(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    outputs.atomic_write_bytes(target, b"first")
    assert target.read_bytes() == b"first"
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)
    with pytest.raises(OutputError, match="already exists; pass --force"):
        outputs.atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"first"
    outputs.atomic_write_bytes(target, b"third", force=True)
    assert target.read_bytes() == b"third"
    assert leftovers(tmp_path) == ["x.bin"]


def test_atomic_write_refuses_bad_places(tmp_path: Path, unwritable_dir: Path) -> None:
    with pytest.raises(OutputError, match="folder does not exist"):
        outputs.atomic_write_bytes(tmp_path / "nope" / "x.png", b"data")
    (tmp_path / "adir").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        outputs.atomic_write_bytes(tmp_path / "adir", b"data", force=True)
    with pytest.raises(OutputError, match=str(unwritable_dir)):
        outputs.atomic_write_bytes(unwritable_dir / "edgevae-test.png", b"data")
    assert not (unwritable_dir / "edgevae-test.png").exists()
    assert leftovers(tmp_path) == ["adir"]


def test_atomic_write_failure_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs.os, "replace", broken_replace)
    with pytest.raises(OutputError, match="No space left"):
        outputs.atomic_write_bytes(tmp_path / "x.png", b"data")
    assert leftovers(tmp_path) == []


def test_write_images_grid_npy_and_folder(tmp_path: Path) -> None:
    images = synthetic_images(5, seed=21)
    [grid_path] = outputs.write_images(images, tmp_path / "g.png")
    with Image.open(grid_path) as im:
        np.testing.assert_array_equal(np.asarray(im)[None], grid(images))
    [npy_path] = outputs.write_images(images, tmp_path / "a.npy")
    np.testing.assert_array_equal(np.load(npy_path), images)
    paths = outputs.write_images(images, tmp_path / "folder", names=["x", "y", "x", "z", "x"])
    assert [p.name for p in paths] == ["x.png", "y.png", "x-1.png", "z.png", "x-2.png"]
    for image, path in zip(images, paths):
        with Image.open(path) as im:
            np.testing.assert_array_equal(np.asarray(im), image[0])
    unnamed = outputs.write_images(images[:2], tmp_path / "unnamed")
    assert [p.name for p in unnamed] == ["0000.png", "0001.png"]
    assert not [name for name in leftovers(tmp_path) if name.endswith(".tmp")]


def test_write_images_refuses_empty_grid(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="no images"):
        outputs.write_images(np.zeros((0, *GRAY), np.uint8), tmp_path / "g.png")
    assert leftovers(tmp_path) == []


def test_folder_output_is_all_or_nothing_when_one_target_exists(tmp_path: Path) -> None:
    images = synthetic_images(3)
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "0001.png").write_bytes(b"keep me")
    with pytest.raises(OutputError, match="0001.png: already exists"):
        outputs.write_images(images, folder)
    assert leftovers(tmp_path) == ["out", "out/0001.png"]
    assert (folder / "0001.png").read_bytes() == b"keep me"
    outputs.write_images(images, folder, force=True)
    assert leftovers(folder) == ["0000.png", "0001.png", "0002.png"]


def test_folder_output_takes_back_its_files_when_a_write_fails(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real = outputs._stage
    calls = []

    def fail_third(path: Path, data: bytes, temps: list[str]) -> str:
        calls.append(path)
        if len(calls) == 3:
            raise OutputError(f"{path}: cannot write (disk full)")
        return real(path, data, temps)

    monkeypatch.setattr(outputs, "_stage", fail_third)
    with pytest.raises(OutputError, match="disk full"):
        outputs.write_images(synthetic_images(4), tmp_path / "new")
    assert leftovers(tmp_path) == []  # the folder this call created is gone too


def test_folder_output_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("a file")
    with pytest.raises(OutputError, match="not a folder"):
        outputs.write_images(synthetic_images(1), tmp_path / "out")
    assert (tmp_path / "out").read_text() == "a file"


def test_unwritable_folder_output(unwritable_dir: Path) -> None:
    before = sorted(os.listdir(unwritable_dir))
    with pytest.raises(OutputError):
        outputs.write_images(synthetic_images(2), unwritable_dir / "edgevae-test-out")
    with pytest.raises(OutputError):
        outputs.write_images(synthetic_images(2), unwritable_dir / "edgevae-test.png")
    assert sorted(os.listdir(unwritable_dir)) == before
