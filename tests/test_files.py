"""Safe paths under the data root and safe extraction of hostile zip archives."""

import io
import os
import stat
import zipfile

import pytest

from core.data.files import resolve_under_root, safe_extract_zip
from core.errors import UserError


def make_zip(path, members: dict, compression=zipfile.ZIP_DEFLATED):
    """Write a zip whose members are {name or ZipInfo: bytes}."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return path


def patch_headers(archive, local_offset: int, central_offset: int, value: int, width: int):
    """Overwrite a field of the first member's local and central directory headers."""
    data = bytearray(archive.read_bytes())
    for signature, offset in ((b"PK\x03\x04", local_offset), (b"PK\x01\x02", central_offset)):
        start = data.index(signature) + offset
        data[start : start + width] = value.to_bytes(width, "little")
    archive.write_bytes(bytes(data))


def tree(folder) -> set[str]:
    """Every path under `folder`, relative to it."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def workspace(tmp_path):
    """An uploads folder beside which nothing else may appear; dest goes inside it."""
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    return uploads


def assert_refused(archive, workspace, match, **limits):
    dest = workspace / "extracted"
    before = tree(workspace.parent)

    with pytest.raises(UserError, match=match):
        safe_extract_zip(archive, dest, **limits)

    assert tree(workspace.parent) == before, "a refused archive must leave nothing behind"


# --- extraction that works ---------------------------------------------------


def test_single_top_folder_is_unwrapped(tmp_path, workspace):
    archive = make_zip(tmp_path / "pets.zip", {"pets/cats/1.jpg": b"c", "pets/dogs/1.jpg": b"d"})

    root = safe_extract_zip(archive, workspace / "x")

    assert root == workspace / "x" / "pets"
    assert (root / "cats" / "1.jpg").read_bytes() == b"c"
    assert tree(root) == {"cats", "dogs", "cats/1.jpg", "dogs/1.jpg"}


def test_class_folders_at_top_level_return_dest(tmp_path, workspace):
    archive = make_zip(tmp_path / "pets.zip", {"cats/1.jpg": b"c", "dogs/1.jpg": b"d"})

    assert safe_extract_zip(archive, workspace / "x") == workspace / "x"


def test_junk_is_skipped_and_does_not_prevent_unwrapping(tmp_path, workspace):
    archive = make_zip(
        tmp_path / "mac.zip",
        {
            "data/cats/1.jpg": b"c",
            "data/cats/.DS_Store": b"junk",
            "data/cats/._1.jpg": b"fork",
            "data/dogs/Thumbs.db": b"junk",
            "data/dogs/2.jpg": b"d",
            "__MACOSX/data/cats/._1.jpg": b"fork",
        },
    )

    root = safe_extract_zip(archive, workspace / "x")

    assert root == workspace / "x" / "data"
    assert tree(workspace / "x") == {
        "data",
        "data/cats",
        "data/dogs",
        "data/cats/1.jpg",
        "data/dogs/2.jpg",
    }


def test_spaces_and_non_ascii_folder_names_survive(tmp_path, workspace):
    names = ["chats noirs/été.jpg", "猫/一.png", "Ñandú bird/x.jpg"]
    archive = make_zip(tmp_path / "intl.zip", {name: name.encode() for name in names})
    with zipfile.ZipFile(archive) as check:
        assert all(info.flag_bits & 0x800 for info in check.infolist())  # UTF-8 names flag

    root = safe_extract_zip(archive, workspace / "x")

    assert {entry.name for entry in root.iterdir()} == {"chats noirs", "猫", "Ñandú bird"}
    assert all((root / name).read_bytes() == name.encode() for name in names)


def test_uploaded_file_object_is_accepted(tmp_path, workspace):
    buffer = io.BytesIO(
        make_zip(tmp_path / "a.zip", {"cats/1.jpg": b"c", "dogs/1.jpg": b"d"}).read_bytes()
    )
    buffer.name = "upload.zip"

    root = safe_extract_zip(buffer, workspace / "x")

    assert (root / "dogs" / "1.jpg").read_bytes() == b"d"


def test_windows_backslash_separators_become_folders(tmp_path, workspace):
    archive = make_zip(tmp_path / "win.zip", {"cats\\1.jpg": b"c", "dogs\\1.jpg": b"d"})

    root = safe_extract_zip(archive, workspace / "x")

    assert tree(root) == {"cats", "dogs", "cats/1.jpg", "dogs/1.jpg"}


def test_existing_empty_dest_is_filled(tmp_path, workspace):
    dest = workspace / "x"
    dest.mkdir()

    safe_extract_zip(make_zip(tmp_path / "a.zip", {"a/1.jpg": b"1", "b/1.jpg": b"2"}), dest)

    assert tree(dest) == {"a", "b", "a/1.jpg", "b/1.jpg"}


# --- hostile paths and member types -----------------------------------------


@pytest.mark.parametrize(
    "member, match",
    [
        ("../evil.txt", r"'\.\.'"),
        ("cats/../../evil.txt", r"'\.\.'"),
        ("..\\..\\evil.txt", r"'\.\.'"),
        ("/tmp/evil.txt", "absolute path"),
        ("\\tmp\\evil.txt", "absolute path"),
        ("C:/evil.txt", "drive letter"),
        ("C:\\evil.txt", "drive letter"),
    ],
)
def test_path_escapes_are_refused(tmp_path, workspace, member, match):
    archive = make_zip(tmp_path / "evil.zip", {"cats/1.jpg": b"ok", member: b"pwned"})

    assert_refused(archive, workspace, match)
    assert not (tmp_path / "evil.txt").exists()


def test_symlink_member_is_refused(tmp_path, workspace):
    link = zipfile.ZipInfo("cats/passwd.jpg")
    link.create_system = 3  # unix, so the mode in external_attr counts
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = make_zip(tmp_path / "link.zip", {"cats/1.jpg": b"ok", link: b"/etc/passwd"})

    assert_refused(archive, workspace, "symbolic link")


def test_encrypted_member_is_refused(tmp_path, workspace):
    archive = make_zip(tmp_path / "enc.zip", {"cats/1.jpg": b"x"})
    patch_headers(archive, local_offset=6, central_offset=8, value=0x1, width=2)  # "encrypted" bit
    with zipfile.ZipFile(archive) as check:
        assert check.infolist()[0].flag_bits & 0x1

    assert_refused(archive, workspace, "encrypted")


# --- size limits and bombs ---------------------------------------------------


def test_archive_over_the_upload_limit_is_refused(tmp_path, workspace):
    archive = make_zip(tmp_path / "big.zip", {"a/1.jpg": os.urandom(4096)})

    assert_refused(
        archive,
        workspace,
        r"big.zip is 4\.\d\d KiB, over the limit of 1000 bytes",
        max_archive_bytes=1000,
    )
    assert_refused(
        io.BytesIO(archive.read_bytes()),
        workspace,
        "over the limit of 1000 bytes",
        max_archive_bytes=1000,
    )


def test_too_many_files_are_refused(tmp_path, workspace):
    archive = make_zip(tmp_path / "many.zip", {f"a/{i}.jpg": b"x" for i in range(5)})

    assert_refused(archive, workspace, "5 files, over the limit of 4", max_files=4)


def test_declared_total_over_limit_is_refused(tmp_path, workspace):
    archive = make_zip(tmp_path / "total.zip", {"a/1.bin": bytes(2 * 1024**2)})

    assert_refused(
        archive,
        workspace,
        "expands to 2.00 MiB, over the limit of 1.00 MiB",
        max_total_bytes=1024**2,
        max_ratio=10**9,
    )


def test_zip_bomb_of_zeros_is_refused_by_its_ratio(tmp_path, workspace):
    archive = make_zip(tmp_path / "bomb.zip", {"a/zeros.bin": bytes(4 * 1024**2)})
    assert archive.stat().st_size < 40_000

    assert_refused(archive, workspace, "compression ratio .* suspicious")


def test_lying_size_header_is_refused(tmp_path, workspace):
    archive = make_zip(tmp_path / "liar.zip", {"a/zeros.bin": bytes(256 * 1024)})
    patch_headers(
        archive, local_offset=22, central_offset=24, value=100, width=4
    )  # uncompressed size
    with zipfile.ZipFile(archive) as check:
        assert check.infolist()[0].file_size == 100

    assert_refused(
        archive, workspace, "not a valid zip archive \\(Bad CRC-32", max_total_bytes=64 * 1024
    )


# --- not a zip, corrupt, bad destination -------------------------------------


def test_text_file_is_not_a_zip(tmp_path, workspace):
    fake = tmp_path / "notes.zip"
    fake.write_text("definitely not a zip")

    assert_refused(fake, workspace, "notes.zip is not a valid zip archive")


def test_corrupt_member_data_is_refused(tmp_path, workspace):
    archive = make_zip(tmp_path / "bad.zip", {"a/1.bin": os.urandom(20_000), "b/2.bin": b"ok"})
    data = bytearray(archive.read_bytes())
    data[5000:5100] = bytes(100)
    archive.write_bytes(bytes(data))

    assert_refused(archive, workspace, "not a valid zip")


def test_truncated_archive_is_refused(tmp_path, workspace):
    archive = make_zip(tmp_path / "cut.zip", {"a/1.bin": os.urandom(5000)})
    archive.write_bytes(archive.read_bytes()[:3000])

    assert_refused(archive, workspace, "not a valid zip")


def test_archive_of_only_junk_is_refused(tmp_path, workspace):
    archive = make_zip(tmp_path / "junk.zip", {"__MACOSX/._a": b"x", ".DS_Store": b"y"})

    assert_refused(archive, workspace, "contains no files")


def test_non_empty_dest_is_refused_and_untouched(tmp_path, workspace):
    dest = workspace / "x"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")

    with pytest.raises(UserError, match="not an empty folder"):
        safe_extract_zip(make_zip(tmp_path / "a.zip", {"a/1.jpg": b"1"}), dest)
    assert tree(dest) == {"keep.txt"}


# --- resolve_under_root ------------------------------------------------------


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    (root / "flowers" / "roses").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    return root


def test_relative_and_absolute_paths_inside_root_resolve(data_root):
    flowers = (data_root / "flowers").resolve()

    assert resolve_under_root(data_root, "flowers") == flowers
    assert resolve_under_root(data_root, data_root / "flowers") == flowers
    assert resolve_under_root(data_root, "flowers/roses/../") == flowers
    assert resolve_under_root(str(data_root), "") == data_root.resolve()


@pytest.mark.parametrize("escape", ["..", "../secret", "flowers/../../secret"])
def test_dotdot_escapes_are_refused(data_root, escape):
    with pytest.raises(UserError, match="is outside the data root") as raised:
        resolve_under_root(data_root, escape)

    assert escape in raised.value.message and str(data_root.resolve()) in raised.value.message


def test_absolute_path_outside_root_is_refused(data_root, tmp_path):
    with pytest.raises(UserError, match="outside the data root"):
        resolve_under_root(data_root, tmp_path / "secret")
    with pytest.raises(UserError, match="outside the data root"):
        resolve_under_root(data_root, "/etc")


def test_symlink_pointing_out_of_root_is_refused(data_root, tmp_path):
    (data_root / "shortcut").symlink_to(tmp_path / "secret", target_is_directory=True)

    with pytest.raises(UserError, match="through a symbolic link") as raised:
        resolve_under_root(data_root, "shortcut")

    assert "shortcut" in raised.value.message and raised.value.hint


def test_symlink_staying_inside_root_is_followed(data_root):
    (data_root / "alias").symlink_to(data_root / "flowers", target_is_directory=True)

    assert (
        resolve_under_root(data_root, "alias/roses") == (data_root / "flowers" / "roses").resolve()
    )


def test_null_byte_is_a_user_error(data_root):
    with pytest.raises(UserError, match="Cannot use the path"):
        resolve_under_root(data_root, "flowers\0")
