"""edgevae.runtime.images (reading, grids) and edgevae.runtime.outputs (safe writes)."""

from __future__ import annotations

import os
import struct
import zlib
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


def save(array: np.ndarray, path: Path, mode: str, **params: object) -> Path:
    """Save a uint8 (H, W[, C]) array as an image of Pillow ``mode`` (created from the array)."""
    Image.fromarray(array, mode=mode).save(path, **params)
    return path


def png16(samples: np.ndarray, path: Path) -> Path:
    """Write uint16 samples (H, W, C), C = 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA), as a
    16-bit PNG built from its chunks: Pillow writes 16-bit gray only, not 16-bit colour or alpha."""
    h, w, c = samples.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = b"".join(b"\0" + samples[y].astype(">u2").tobytes() for y in range(h))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def viewer_8bit(v16: np.ndarray) -> np.ndarray:
    """The documented 16 -> 8 bit rule, v8 = round(v16 * 255 / 65535), in floating point."""
    return np.rint(v16.astype(np.float64) * 255 / 65535).astype(np.uint8)


def test_rgb_with_equal_channels_counts_as_gray(tmp_path: Path) -> None:
    image = synthetic_images(1, seed=2)[0, 0]
    save(np.stack([image] * 3, axis=-1), tmp_path / "rgb.png", "RGB")
    np.testing.assert_array_equal(load_image(tmp_path / "rgb.png", GRAY)[0], image)


def test_fully_opaque_alpha_is_ignored(tmp_path: Path) -> None:
    """Alpha that hides nothing changes nothing: gray + alpha, RGBA, and palette or tRNS
    transparency that no pixel uses are read as the plain image, with or without --resize."""
    image = synthetic_images(1, seed=2)[0, 0]
    colour = synthetic_images(1, seed=3, shape=RGB)[0].transpose(1, 2, 0)
    opaque = np.full_like(image, 255)
    files = {
        "la": (save(np.stack([image, opaque], -1), tmp_path / "la.png", "LA"), GRAY, image[None]),
        "rgba gray": (save(np.stack([image] * 3 + [opaque], -1), tmp_path / "g.png", "RGBA"), GRAY, image[None]),
        "rgba": (save(np.dstack([colour, opaque]), tmp_path / "c.png", "RGBA"), RGB, colour.transpose(2, 0, 1)),
        "gray tRNS": (save(np.where(image > 0, image, 1), tmp_path / "t.png", "L", transparency=0), GRAY,
                      np.where(image > 0, image, 1)[None]),
        "palette": (tmp_path / "p.png", GRAY, image[None]),
    }
    palette = Image.fromarray(image, mode="L").convert("P")
    unused = int(np.setdiff1d(np.arange(256), np.asarray(palette))[0])
    palette.save(tmp_path / "p.png", transparency=unused)
    for path in (tmp_path / "t.png", tmp_path / "p.png"):
        assert Image.open(path).has_transparency_data  # a tRNS entry, used by no pixel
    assert Image.open(tmp_path / "p.png").mode == "P"
    for kind, (path, shape, want) in files.items():
        np.testing.assert_array_equal(load_image(path, shape), want, err_msg=kind)
        np.testing.assert_array_equal(load_image(path, shape, resize=True), want, err_msg=kind)


def translucent_files(folder: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """Images with real transparency -> (path, what --resize must read for a gray model: the
    pixels composited over black, v * alpha / 255 rounded, then gray by Pillow's luma)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = synthetic_images(1, seed=2)[0, 0]
    alpha = np.tile(np.linspace(0, 255, 28).astype(np.uint8), (28, 1))
    over_black = ((image.astype(np.uint32) * alpha + 127) // 255).astype(np.uint8)
    colour = synthetic_images(1, seed=3, shape=RGB)[0].transpose(1, 2, 0)
    colour_over_black = ((colour.astype(np.uint32) * alpha[:, :, None] + 127) // 255).astype(np.uint8)
    palette = Image.fromarray(image, mode="L").convert("P")
    palette.save(folder / "palette.png", transparency=int(np.asarray(palette)[0, 0]))  # the background is see-through
    background = image == image[0, 0]
    return {
        "gray + alpha": (save(np.stack([image, alpha], -1), folder / "la.png", "LA"), over_black),
        "RGBA gray": (save(np.stack([image] * 3 + [alpha], -1), folder / "g.png", "RGBA"), over_black),
        "RGBA colour": (save(np.dstack([colour, alpha]), folder / "c.png", "RGBA"),
                        np.asarray(Image.fromarray(colour_over_black, mode="RGB").convert("L"))),
        "palette": (folder / "palette.png", np.where(background, 0, image)),
    }


def test_transparency_is_refused_without_resize_and_composited_over_black_with_it(tmp_path: Path) -> None:
    for kind, (path, want) in translucent_files(tmp_path).items():
        with pytest.raises(InputError) as caught:
            load_image(path, GRAY)
        message = str(caught.value)
        assert message.startswith(f"{path}: has transparent pixels") and "--resize" in message, kind
        assert "over black" in message and "channel(s)" not in message and "\n" not in message, kind
        np.testing.assert_array_equal(load_image(path, GRAY, resize=True)[0], want, err_msg=kind)
    assert images_mod.ALPHA_BACKGROUND == 0


def test_colour_and_gray_mismatches_name_the_input(tmp_path: Path) -> None:
    colour = synthetic_images(1, seed=3, shape=RGB)[0]
    save(colour.transpose(1, 2, 0), tmp_path / "c.png", "RGB")
    np.testing.assert_array_equal(load_image(tmp_path / "c.png", RGB), colour)
    with pytest.raises(InputError, match=r"c.png: is a colour image \(3 channels, RGB\), the model expects gray "
                                         r"\(1 channel\); pass --resize"):
        load_image(tmp_path / "c.png", GRAY)
    opaque = np.dstack([colour.transpose(1, 2, 0), np.full((28, 28), 255, np.uint8)])
    save(opaque, tmp_path / "ca.png", "RGBA")  # an opaque RGBA is a colour image, never "3 channel(s)" of 4
    with pytest.raises(InputError, match=r"ca.png: is a colour image \(4 channels, RGBA\), the model expects gray"):
        load_image(tmp_path / "ca.png", GRAY)
    np.testing.assert_array_equal(load_image(tmp_path / "ca.png", GRAY, resize=True),
                                  load_image(tmp_path / "c.png", GRAY, resize=True))
    [gray_path] = write_pngs(synthetic_images(1, seed=4), tmp_path / "g")
    with pytest.raises(InputError, match=r"is a gray image \(1 channel, gray\), the model expects colour "
                                         r"\(3 channels, RGB\); pass --resize"):
        load_image(gray_path, RGB)
    converted = load_image(gray_path, RGB, resize=True)
    assert converted.shape == RGB
    np.testing.assert_array_equal(converted[0], converted[1])
    np.testing.assert_array_equal(converted[1], converted[2])


def test_sixteen_bit_gray_maps_every_value_like_a_viewer(tmp_path: Path) -> None:
    """All 65,536 levels of a 16-bit gray PNG, TIFF and PGM: v8 = round(v16 * 255 / 65535), the
    same with and without --resize; 8-bit values stored as v * 257 come back exactly."""
    shape = (1, 256, 256)
    v16 = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    want = viewer_8bit(v16)
    Image.fromarray(v16).save(tmp_path / "deep.png")
    Image.fromarray(v16).save(tmp_path / "deep.tif")
    (tmp_path / "deep.pgm").write_bytes(b"P5\n256 256\n65535\n" + v16.astype(">u2").tobytes())
    assert {Image.open(tmp_path / n).mode for n in ("deep.png", "deep.tif", "deep.pgm")} == {"I;16", "I"}
    for name in ("deep.png", "deep.tif", "deep.pgm"):
        np.testing.assert_array_equal(load_image(tmp_path / name, shape)[0], want, err_msg=name)
        np.testing.assert_array_equal(load_image(tmp_path / name, shape, resize=True)[0], want, err_msg=name)
    levels = np.arange(256, dtype=np.uint16).reshape(16, 16).repeat(2, 0).repeat(2, 1)[:28, :28]
    Image.fromarray(levels * 257).save(tmp_path / "expanded.png")
    np.testing.assert_array_equal(load_image(tmp_path / "expanded.png", GRAY)[0], levels)
    # Resizing works on the 8-bit image: a 16-bit image shrunk equals its 8-bit version shrunk.
    big = np.kron(v16[:56:2, :56:2], np.ones((2, 2), np.uint16))  # 56x56
    Image.fromarray(big).save(tmp_path / "big16.png")
    Image.fromarray(viewer_8bit(big)).save(tmp_path / "big8.png")
    np.testing.assert_array_equal(load_image(tmp_path / "big16.png", GRAY, resize=True),
                                  load_image(tmp_path / "big8.png", GRAY, resize=True))


def test_sixteen_bit_colour_and_alpha_pngs(tmp_path: Path) -> None:
    """Pillow keeps the high byte of 16-bit colour (v16 >> 8): within one level of the gray rule,
    identical with and without --resize; 16-bit alpha follows the alpha rules."""
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 65536, size=(28, 28, 3), dtype=np.uint16)
    png16(rgb, tmp_path / "rgb16.png")
    got = load_image(tmp_path / "rgb16.png", RGB)
    np.testing.assert_array_equal(got, (rgb >> 8).astype(np.uint8).transpose(2, 0, 1))
    assert np.abs(got.astype(int) - viewer_8bit(rgb).transpose(2, 0, 1)).max() == 1
    np.testing.assert_array_equal(load_image(tmp_path / "rgb16.png", RGB, resize=True), got)
    gray = rng.integers(0, 65536, size=(28, 28, 1), dtype=np.uint16)
    opaque = np.full_like(gray, 65535)
    png16(np.dstack([gray, opaque]), tmp_path / "la16.png")
    np.testing.assert_array_equal(load_image(tmp_path / "la16.png", GRAY)[0], (gray[:, :, 0] >> 8).astype(np.uint8))
    png16(np.dstack([gray, opaque // 2]), tmp_path / "half.png")
    with pytest.raises(InputError, match="half.png: has transparent pixels"):
        load_image(tmp_path / "half.png", GRAY)
    assert load_image(tmp_path / "half.png", GRAY, resize=True).max() <= 128


def test_sixteen_bit_transparency_key(tmp_path: Path) -> None:
    v16 = np.full((28, 28), 1000, np.uint16)
    v16[5:20, 5:20] = 60000
    Image.fromarray(v16).save(tmp_path / "key.png", transparency=1000)  # a tRNS level: the surround is see-through
    with pytest.raises(InputError, match="key.png: has transparent pixels"):
        load_image(tmp_path / "key.png", GRAY)
    got = load_image(tmp_path / "key.png", GRAY, resize=True)[0]
    np.testing.assert_array_equal(got, np.where(v16 == 1000, 0, viewer_8bit(v16)))


def test_pixels_without_an_8_bit_scale_are_refused(tmp_path: Path) -> None:
    Image.fromarray(np.full((28, 28), 0.5, np.float32)).save(tmp_path / "float.tif")
    for resize in (False, True):
        with pytest.raises(InputError, match="float.tif: has floating-point pixels"):
            load_image(tmp_path / "float.tif", GRAY, resize=resize)
    wide = np.zeros((28, 28), np.int32)
    wide[0, 0] = 70000
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    with pytest.raises(InputError, match=r"wide.tif: has 32-bit integer pixels outside 0..65535 \(0..70000\)"):
        load_image(tmp_path / "wide.tif", GRAY)


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


@pytest.mark.parametrize("name, kind", [("a.png", "png"), ("A.PNG", "png"), ("z.npy", "npy"),
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


def test_one_image_to_a_png_is_the_image_itself(tmp_path: Path) -> None:
    """A .png of one image holds exactly that image (C x H x W, no grid border), for gray and
    colour and any size; two or more images make a grid."""
    for shape in (GRAY, RGB, (1, 20, 36)):
        image = synthetic_images(1, seed=8, shape=shape)
        [path] = outputs.write_images(image, tmp_path / f"one-{shape[0]}-{shape[2]}.png")
        with Image.open(path) as im:
            assert im.mode == ("L" if shape[0] == 1 else "RGB") and im.size == (shape[2], shape[1])
        np.testing.assert_array_equal(load_image(path, shape), image[0])
        assert outputs.picture_png(image) == path.read_bytes()
    two = synthetic_images(2, seed=9)
    [path] = outputs.write_images(two, tmp_path / "two.png")
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(im)[None], grid(two))
    with pytest.raises(OutputError, match="no images"):
        outputs.picture_png(two[:0])


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


# -- the same rules through the CLI ---------------------------------------------------------------


def fashion_pngs(folder: Path, n: int) -> tuple[np.ndarray, list[Path]]:
    """The first ``n`` Fashion-MNIST test images, uint8 (n, 1, 28, 28), saved as 000.png..."""
    from test_lossless import fashion_images

    images = fashion_images(n)
    return images, write_pngs(images, folder)


@pytest.mark.parametrize("mode", ["runner", "subprocess"])
def test_cli_lossless_single_image_png_round_trips_exactly(mode: str, tmp_path: Path) -> None:
    """The user's case with the shipped models: compress --lossless one scan, decompress it to a
    .png, and get the very pixels back (28x28, no grid border)."""
    from test_cli import edgevae, read_png

    images, [scan] = fashion_pngs(tmp_path / "in", 1)
    assert edgevae(mode, "compress", scan, "--lossless", "-o", tmp_path / "scan.evz").code == 0
    done = edgevae(mode, "decompress", tmp_path / "scan.evz", "-o", tmp_path / "scan-back.png")
    assert done.code == 0, done
    back = read_png(tmp_path / "scan-back.png")
    assert back.shape == (28, 28) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, images[0, 0])


def test_cli_single_images_to_png_are_the_images_and_several_a_grid(tmp_path: Path) -> None:
    """Lossy: one image decompressed to a .png (a one-image file, or --index of a bigger one) is
    that image at 28x28, equal to the .npy output; the whole container to a .png is a grid."""
    from test_cli import edgevae, read_png

    images, paths = fashion_pngs(tmp_path / "in", 4)
    assert edgevae("runner", "compress", tmp_path / "in", "-o", tmp_path / "all.evz").code == 0
    assert edgevae("runner", "decompress", tmp_path / "all.evz", "-o", tmp_path / "all.npy").code == 0
    decoded = np.load(tmp_path / "all.npy")
    assert decoded.shape == images.shape
    assert edgevae("runner", "decompress", tmp_path / "all.evz", "--index", 2, "-o", tmp_path / "coat.png").code == 0
    np.testing.assert_array_equal(read_png(tmp_path / "coat.png"), decoded[2, 0])
    assert edgevae("runner", "decompress", tmp_path / "all.evz", "-o", tmp_path / "grid.png").code == 0
    np.testing.assert_array_equal(read_png(tmp_path / "grid.png"), grid(decoded)[0])

    assert edgevae("runner", "compress", paths[1], "-o", tmp_path / "one.evz").code == 0
    assert edgevae("runner", "decompress", tmp_path / "one.evz", "-o", tmp_path / "one.npy").code == 0
    assert edgevae("runner", "decompress", tmp_path / "one.evz", "-o", tmp_path / "one.png").code == 0
    with Image.open(tmp_path / "one.png") as im:
        assert im.mode == "L" and im.size == (28, 28)
    np.testing.assert_array_equal(read_png(tmp_path / "one.png"), np.load(tmp_path / "one.npy")[0, 0])


def test_cli_denoise_sample_and_decode_of_one_image_write_the_image(tmp_path: Path, tiny_bundle: Path) -> None:
    from test_cli import edgevae, read_png

    images, [clean] = fashion_pngs(tmp_path / "in", 1)
    noisy = np.clip(images[0, 0] + np.random.default_rng(1).normal(0, 25, (28, 28)), 0, 255).astype(np.uint8)
    Image.fromarray(noisy, mode="L").save(tmp_path / "noisy.png")
    for target in ("clean.png", "clean.npy"):
        assert edgevae("runner", "denoise", tmp_path / "noisy.png", "--sigma", 25, "-o", tmp_path / target).code == 0
    np.testing.assert_array_equal(read_png(tmp_path / "clean.png"), np.load(tmp_path / "clean.npy")[0, 0])
    for target in ("s.png", "s.npy"):
        done = edgevae("runner", "sample", "-n", 1, "--seed", 3, "--model", tiny_bundle, "-o", tmp_path / target)
        assert done.code == 0, done
    np.testing.assert_array_equal(read_png(tmp_path / "s.png"), np.load(tmp_path / "s.npy")[0, 0])


def lossless_read(tmp_path: Path, source: Path, *flags: str) -> tuple[object, np.ndarray | None]:
    """What ``compress SOURCE --lossless FLAGS`` read, recovered exactly by ``decompress``: the
    compress outcome and the pixels (None if compress failed)."""
    from test_cli import edgevae

    target = tmp_path / "read.evz"
    target.unlink(missing_ok=True)
    done = edgevae("runner", "compress", source, "--lossless", *flags, "-o", target)
    if done.code != 0:
        assert not target.exists()
        return done, None
    back = tmp_path / "read.npy"
    back.unlink(missing_ok=True)
    assert edgevae("runner", "decompress", target, "-o", back).code == 0
    return done, np.load(back)[0]


def test_cli_input_rules(tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Transparency, 16 bits and colour through the CLI: the library's pixels exactly, or one
    error line and exit 2; --resize composites, converts and gives 16-bit the same pixels."""
    from test_cli import assert_clean_error

    monkeypatch.setenv("EDGEVAE_MODEL", str(tiny_bundle))
    work = tmp_path / "work"
    work.mkdir()
    for kind, (path, want) in translucent_files(tmp_path / "translucent").items():
        done, _ = lossless_read(work, path)
        assert_clean_error(done, path.name, "has transparent pixels", "--resize", "over black")
        done, got = lossless_read(work, path, "--resize")
        assert done.code == 0, (kind, done)
        np.testing.assert_array_equal(got[0], want, err_msg=kind)

    image = synthetic_images(1, seed=2)[0, 0]
    save(np.stack([image, np.full_like(image, 255)], -1), tmp_path / "opaque.png", "LA")
    for flags in ((), ("--resize",)):
        done, got = lossless_read(work, tmp_path / "opaque.png", *flags)
        np.testing.assert_array_equal(got[0], image)

    v16 = (np.arange(784, dtype=np.uint32).reshape(28, 28) * 83 % 65536).astype(np.uint16)
    Image.fromarray(v16).save(tmp_path / "deep.png")
    for flags in ((), ("--resize",)):
        done, got = lossless_read(work, tmp_path / "deep.png", *flags)
        np.testing.assert_array_equal(got[0], viewer_8bit(v16))

    colour = np.dstack([synthetic_images(1, seed=3, shape=RGB)[0].transpose(1, 2, 0), np.full((28, 28), 255, np.uint8)])
    save(colour, tmp_path / "colour.png", "RGBA")
    done, _ = lossless_read(work, tmp_path / "colour.png")
    line = assert_clean_error(done, "colour.png: is a colour image (4 channels, RGBA)", "expects gray", "--resize")
    assert "3 channel" not in line
    done, got = lossless_read(work, tmp_path / "colour.png", "--resize")
    np.testing.assert_array_equal(got, load_image(tmp_path / "colour.png", GRAY, resize=True))
    Image.fromarray(np.full((28, 28), 0.5, np.float32)).save(tmp_path / "float.tif")
    assert_clean_error(lossless_read(work, tmp_path / "float.tif", "--resize")[0], "float.tif", "floating-point")
    assert sorted(p.name for p in work.iterdir()) == ["read.npy"]  # the failed compress left nothing
