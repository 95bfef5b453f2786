"""The public-dataset catalog: its content, and download against a real local HTTP server."""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from matseg.datasets.catalog import (
    CatalogEntry,
    CatalogFile,
    CatalogSource,
    default_cache_dir,
    download,
    download_entry,
    file_url,
    get_entry,
    load_catalog,
    local_status,
)
from matseg.errors import DownloadError

NAMES = {
    "nasa_super",
    "nrcan_shale_sem",
    "tbm_grain_256",
    "nasa_meltpool",
    "ampis_powder_sem",
    "xct_qim3d_unlabeled",
}
SMALL = "xct_qim3d_unlabeled"  # 4 files, 7.4 MB


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Handler(SimpleHTTPRequestHandler):
    """Static files with an optional ``bytes=N-`` Range, per-path overrides and a request log."""

    server: _Server

    def translate_path(self, path: str) -> str:
        rel = unquote(urlsplit(path).path).lstrip("/")
        if rel in self.server.overrides:
            return str(self.server.overrides[rel])
        return super().translate_path(path)

    def send_head(self):  # type: ignore[override]
        rng = self.headers.get("Range")
        self.server.log.append((unquote(urlsplit(self.path).path).lstrip("/"), rng))
        path = self.translate_path(self.path)
        cut = self.server.cut_once.pop(self.server.log[-1][0], None)
        if cut is not None:  # announce the whole file, send only `cut` bytes, then hang up
            self.send_response(200)
            self.send_header("Content-Length", str(os.path.getsize(path)))
            self.end_headers()
            self.close_connection = True
            return io.BytesIO(Path(path).read_bytes()[:cut])
        if not (rng and self.server.support_range and os.path.isfile(path)):
            return super().send_head()  # the stdlib handler ignores Range: sends a plain 200
        match = re.fullmatch(r"bytes=(\d+)-", rng)
        size = os.path.getsize(path)
        start = int(match[1]) if match else size
        if start >= size:
            self.send_error(416)
            return None
        handle = open(path, "rb")  # noqa: SIM115 (closed by the handler after copyfile)
        handle.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        return handle

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    overrides: dict[str, Path]
    log: list[tuple[str, str | None]]
    support_range: bool
    cut_once: dict[str, int]


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[str, _Server]]]:
    """Start static HTTP servers on 127.0.0.1 (port 0) in threads; all stopped at teardown."""
    servers: list[_Server] = []

    def start(root: Path, support_range: bool = True, overrides: dict | None = None):
        server = _Server(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
        server.overrides = dict(overrides or {})
        server.log = []
        server.support_range = support_range
        server.cut_once = {}
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/", server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# --- catalog content ------------------------------------------------------------------------


def test_catalog_entries_are_complete() -> None:
    entries = load_catalog()
    assert {e.name for e in entries} == NAMES
    for entry in entries:
        assert entry.licence and entry.source.repository and entry.description
        assert entry.example_spec.startswith("examples/")
        assert (Path(__file__).resolve().parents[1] / entry.example_spec).is_file()
        assert entry.modality in {"SEM", "Optical", "XCT"}
        paths = [f.path for f in entry.files]
        assert len(paths) == len(set(paths))
        assert "SOURCE.md" in paths
        for item in entry.files:
            assert re.fullmatch(r"[0-9a-f]{64}", item.sha256)
            assert item.size > 0
            if item.url is not None:
                assert item.url.startswith("https://raw.githubusercontent.com/")
                assert not set(" #()") & set(item.url), item.url
        if entry.source.commit_abbreviated:
            assert entry.source.commit and len(entry.source.commit) < 40
            assert "abbreviated" in entry.source.note
    assert get_entry("nasa_super").citation
    assert get_entry("nasa_super").source.commit == "f50b5689a71cf6f86016fb4a5c5a2bb31e0397f3"


def test_nasa_super_urls_come_from_manifest_and_are_quoted() -> None:
    entry = get_entry("nasa_super")
    item = next(f for f in entry.files if "untested" in f.path and f.path.startswith("masks/"))
    assert item.upstream_path == (
        "benchmark_segmentation_data/Super4/test_annot/SE_15kv_50kx_precip - untested-2_0_mask.tif"
    )
    assert item.url is not None and item.url.endswith(
        "SE_15kv_50kx_precip%20-%20untested-2_0_mask.tif"
    )


def test_file_url_quotes_awkward_names() -> None:
    assert file_url("http://h/x/", "a b/#1 (2).tif") == "http://h/x/a%20b/%231%20%282%29.tif"


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(DownloadError) as info:
        get_entry("nope")
    message = str(info.value)
    assert "'nope'" in message and all(name in message for name in NAMES)


def test_catalog_rejects_paths_outside_the_folder() -> None:
    with pytest.raises(ValueError, match="relative POSIX path"):
        CatalogFile(path="../evil", size=1, sha256="0" * 64)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MATSEG_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MATSEG_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "matseg"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "matseg"


def test_entry_without_urls_needs_base_url(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="base_url"):
        download(SMALL, cache_dir=tmp_path)


def test_unreachable_server_fails_fast(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(DownloadError, match="reachable"):
        download(SMALL, cache_dir=tmp_path, base_url="http://127.0.0.1:9", timeout=3)
    assert time.monotonic() - start < 5


def _tiny_entry(root: Path, rel: str, payload: bytes) -> CatalogEntry:
    """A one-file catalog entry whose file is written under ``root``."""
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(payload)
    return CatalogEntry(
        name="tiny",
        title="t",
        modality="SEM",
        material="m",
        description="d",
        licence="MIT",
        source=CatalogSource(repository="local"),
        example_spec="examples/tiny.json",
        files=[
            CatalogFile(path=rel, size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
        ],
    )


def test_awkward_names_round_trip(tmp_path: Path, serve) -> None:
    payload = b"grain boundary " * 100
    entry = _tiny_entry(tmp_path / "served", "sub dir/a #1 (x).txt", payload)
    root = tmp_path / "served"
    base, server = serve(root)
    seen: list[tuple[str, int, int]] = []
    folder = download_entry(
        entry, tmp_path / "cache", base_url=base, progress=lambda *a: seen.append(a)
    )
    assert (folder / "sub dir" / "a #1 (x).txt").read_bytes() == payload
    assert server.log == [("sub dir/a #1 (x).txt", None)]
    assert seen[-1] == ("sub dir/a #1 (x).txt", len(payload), len(payload))


# --- against the real data ------------------------------------------------------------------


@pytest.mark.realdata
def test_catalog_matches_shared_data(shared_data: Path) -> None:
    for entry in load_catalog():
        folder = shared_data / entry.name
        on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert on_disk == {f.path for f in entry.files}, entry.name
        for item in entry.files:
            path = folder / item.path
            assert path.stat().st_size == item.size, item.path
            assert _sha256(path) == item.sha256, item.path


@pytest.mark.realdata
def test_download_verifies_and_second_call_fetches_nothing(
    shared_data: Path, tmp_path: Path, serve
) -> None:
    base, server = serve(shared_data / SMALL)
    assert local_status(SMALL, tmp_path).files_present == 0
    folder = download(SMALL, cache_dir=tmp_path, base_url=base)
    assert folder == tmp_path / "datasets" / SMALL
    for item in get_entry(SMALL).files:
        assert _sha256(folder / item.path) == item.sha256
    assert len(server.log) == len(get_entry(SMALL).files)
    assert not list(folder.rglob("*.part"))
    status = local_status(SMALL, tmp_path)
    assert status.verified and status.complete and status.files_verified == 4
    assert local_status(SMALL, tmp_path, deep=True).complete

    server.log.clear()
    download(SMALL, cache_dir=tmp_path, base_url=base)
    assert server.log == []


@pytest.mark.realdata
@pytest.mark.parametrize("support_range", [True, False])
def test_resume_from_part(shared_data: Path, tmp_path: Path, serve, support_range: bool) -> None:
    rel = "fibers_150x150x150.tif"
    source = (shared_data / SMALL / rel).read_bytes()
    half = len(source) // 2
    folder = tmp_path / "datasets" / SMALL
    folder.mkdir(parents=True)
    # With Range the kept half is real; without, it is junk that must be thrown away.
    kept = source[:half] if support_range else b"\0" * half
    (folder / f"{rel}.part").write_bytes(kept)
    base, server = serve(shared_data / SMALL, support_range=support_range)

    download(SMALL, cache_dir=tmp_path, base_url=base)

    assert (folder / rel).read_bytes() == source
    assert not (folder / f"{rel}.part").exists()
    assert (rel, f"bytes={half}-") in server.log
    assert local_status(SMALL, tmp_path, deep=True).complete


@pytest.mark.realdata
def test_corrupt_file_is_rejected(shared_data: Path, tmp_path: Path, serve) -> None:
    bad = tmp_path / "SOURCE.md"
    data = bytearray((shared_data / SMALL / "SOURCE.md").read_bytes())
    data[10] ^= 0xFF
    bad.write_bytes(bytes(data))
    base, _ = serve(shared_data / SMALL, overrides={"SOURCE.md": bad})
    cache = tmp_path / "cache"

    with pytest.raises(DownloadError) as info:
        download(SMALL, cache_dir=cache, base_url=base)

    message = str(info.value)
    expected = next(f.sha256 for f in get_entry(SMALL).files if f.path == "SOURCE.md")
    assert "SOURCE.md" in message and "sha256" in message and expected in message
    assert hashlib.sha256(bytes(data)).hexdigest() in message
    folder = cache / "datasets" / SMALL
    assert not (folder / "SOURCE.md").exists() and not (folder / "SOURCE.md.part").exists()
    status = local_status(SMALL, cache)
    assert not status.complete and "SOURCE.md" in status.missing


def test_interrupted_transfer_keeps_part_and_resumes(tmp_path: Path, serve) -> None:
    payload = bytes(range(256)) * 2000
    entry = _tiny_entry(tmp_path / "served", "v.bin", payload)
    base, server = serve(tmp_path / "served")
    server.cut_once["v.bin"] = 100_000
    cache = tmp_path / "cache"

    with pytest.raises(DownloadError, match="resume"):
        download_entry(entry, cache, base_url=base)
    part = cache / "datasets" / "tiny" / "v.bin.part"
    assert part.stat().st_size == 100_000

    download_entry(entry, cache, base_url=base)
    assert (cache / "datasets" / "tiny" / "v.bin").read_bytes() == payload
    assert server.log == [("v.bin", None), ("v.bin", "bytes=100000-")]


def test_cli_download_then_check_the_downloaded_copy(
    shared_data: Path, tmp_path: Path, serve
) -> None:
    """`matseg datasets download` from a mirror, then the example spec reads the cached copy."""
    from typer.testing import CliRunner

    from matseg.cli import app

    base, _ = serve(shared_data / "tbm_grain_256")
    runner = CliRunner()
    cache = tmp_path / "cache"
    got = runner.invoke(
        app,
        ["datasets", "download", "tbm_grain_256", "--cache-dir", str(cache), "--base-url", base],
    )
    assert got.exit_code == 0, got.output
    folder = cache / "datasets" / "tbm_grain_256"
    assert len(list((folder / "images").glob("*.png"))) == 80
    spec = Path(__file__).resolve().parents[1] / "examples" / "tbm-grain-256.json"
    checked = runner.invoke(app, ["datasets", "check", str(spec), "--root", str(folder), "--json"])
    assert checked.exit_code == 0, checked.output
    assert '"n_pairs": 80' in checked.stdout
