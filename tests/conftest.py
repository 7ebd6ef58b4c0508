"""Shared test set-up: one torch thread (2 threads are often slower on the 2-core CI box),
offline Hugging Face, and the location of the real data beside the checkout."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RLHFKIT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """Path to ../shared/data; skips the test with a reason where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set RLHFKIT_SHARED_DATA)")
    return SHARED_DATA


def flip_tensor_bit(path: Path) -> None:
    """Flip the lowest bit of the middle byte of the largest tensor in `path` (a torch.save
    file). The zip archive and the pickle stay valid, so torch.load reads the file without
    complaint (it checks no checksum of tensor data) and one number differs."""
    import re
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        record = max((i for i in archive.infolist() if re.search(r"/data/\d+$", i.filename)), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    # the data starts after the local file header: 30 bytes, then the name and the extra field
    name_len, extra_len = struct.unpack("<HH", raw[record.header_offset + 26 : record.header_offset + 30])
    raw[record.header_offset + 30 + name_len + extra_len + record.file_size // 2] ^= 1
    path.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (``loopback.CHROMIUM``) through Python Playwright, one per module;
    skips where Playwright is not installed (a module skips itself where Chromium is absent)."""
    from .loopback import CHROMIUM, CHROMIUM_ARGS

    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()
