"""Fuzzing from the OpenAPI document, and a corpus of hostile inputs, against a real ``bentoml serve`` with
its tokens set.

Every route is in, the state-changing ones too (retraining, alias moves, rollbacks), in an isolated home
with a model trained by the real CLI. All of schemathesis' checks and phases run (examples, coverage,
fuzzing, and the stateful phase that chains routes), once with a fixed seed and once with a new random seed
that the test prints, so a failure can be replayed with ``st run ... --seed N``. ``tests/schemathesis.toml``
says which refusals no schema can predict (an image string that decodes to no image).

The hostile corpus is made by the test itself (no binary fixtures): decompression bombs of every size class,
truncated and bit-flipped files of every accepted format, chunks that inflate, every pixel mode, animations,
polyglots, and JSON that is deep, long, not UTF-8 or not JSON. Each gets a 4xx with a JSON ``error`` (a
bit-flipped file that still decodes may get its 200), the worker stays up, and the server's memory does not
grow by more than 50 MB over the whole corpus.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import random
import signal
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
from PIL import Image, PngImagePlugin

from tests import helpers
from tests.helpers import BIN, ROOT, service_env, train

pytestmark = pytest.mark.slow

API_TOKEN = "fuzz-api-token-41d2"
INFERENCE_TOKEN = "fuzz-inference-token-9c7e"
FIXED_SEED = 20261128


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, real_mnist_dir: Path) -> Iterator[tuple[str, int, Path]]:
    """The service on a free port, serving version 1 of a small model; its URL, pid and log."""
    root = tmp_path_factory.mktemp("fuzz")
    env = service_env(
        root / "home", real_mnist_dir.parent, root / "bentoml",
        MINDTRACE_API_TOKEN=API_TOKEN, MINDTRACE_INFERENCE_TOKEN=INFERENCE_TOKEN,
    )  # fmt: skip
    train(env, root, "--policy", "always")
    try:
        with helpers.served(env, root / "serve.log") as (url, pid):
            yield url, pid, root / "serve.log"
    finally:
        _stop_jobs(root / "home" / "jobs")


def _stop_jobs(jobs: Path) -> None:
    """Retraining jobs run in their own session (a service restart must not kill them): stop the ones the
    fuzzing started, by the pid each recorded."""
    for state_file in jobs.glob("*/state.json"):
        state = json.loads(state_file.read_text())
        if state["status"] in ("queued", "running") and state.get("pid"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(state["pid"], signal.SIGTERM)


@pytest.mark.parametrize("seed", [FIXED_SEED, random.randrange(1, 2**31)], ids=["fixed-seed", "random-seed"])
def test_schemathesis_finds_no_server_error_and_no_schema_violation(served, seed):
    url, _, log = served
    print(f"schemathesis seed {seed}: replay with `st run {url}/docs.json --seed {seed}`")
    env = {
        **os.environ,
        "MINDTRACE_FUZZ_API_TOKEN": API_TOKEN,
        "MINDTRACE_FUZZ_INFERENCE_TOKEN": INFERENCE_TOKEN,
    }
    done = subprocess.run(
        [str(BIN / "st"), "--config-file", str(ROOT / "tests" / "schemathesis.toml"), "run",
         f"{url}/docs.json", "--checks", "all", "--seed", str(seed), "--max-examples", "40",
         "--workers", "1", "--no-color"],
        env=env, capture_output=True, text=True, timeout=900, cwd=log.parent,  # its cache goes there
    )  # fmt: skip
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, f"seed {seed}:\n{report}"
    assert " passed" in done.stdout and "Stateful" in done.stdout, report  # every phase ran
    assert "Traceback" not in log.read_text()


# --- the hostile corpus -------------------------------------------------------------------------------------


def _file(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _hostile_images() -> list[tuple[str, bytes, set[int]]]:
    """(name, file bytes, acceptable statuses)."""
    digit = Image.fromarray((np.arange(784).reshape(28, 28) % 256).astype(np.uint8))
    rng = np.random.default_rng(7)
    cases: list[tuple[str, bytes, set[int]]] = []
    # Decompression bombs: above our limit, above Pillow's warning, above Pillow's hard limit, in each format.
    for side in (2049, 13_000, 30_000):
        cases.append((f"png bomb {side}", _file(Image.new("1", (side, side)), "PNG"), {413}))
    for fmt, offset, pack in (("GIF", 6, "<HH"), ("BMP", 18, "<ii")):
        raw = bytearray(_file(Image.new("L", (8, 8)), fmt))
        raw[offset : offset + struct.calcsize(pack)] = struct.pack(pack, 60_000, 60_000)
        cases.append((f"{fmt} declaring 60000x60000", bytes(raw), {413}))
    jpeg = bytearray(_file(digit, "JPEG"))
    sof = jpeg.index(b"\xff\xc0") + 5  # height, width in the frame header
    jpeg[sof : sof + 4] = struct.pack(">HH", 65_000, 65_000)
    cases.append(("JPEG declaring 65000x65000", bytes(jpeg), {413}))
    # Truncated and bit-flipped files of every accepted format.
    for fmt in ("PNG", "JPEG", "BMP", "GIF"):
        good = _file(digit, fmt)
        for cut in (8, len(good) // 2):
            cases.append((f"{fmt} cut at {cut}", good[:cut], {400}))
        # Only the trailer gone: every pixel is there, and a decoder may take it.
        cases.append((f"{fmt} without its last 3 bytes", good[:-3], {200, 400}))
        for trial in range(3):
            flipped = bytearray(good)
            for at in rng.integers(8, len(good), size=4):
                flipped[at] ^= 1 << int(rng.integers(0, 8))
            cases.append((f"{fmt} bit-flipped {trial}", bytes(flipped), {200, 400, 413, 415}))
    # Chunks that inflate: compressed text, an ICC profile.
    text = PngImagePlugin.PngInfo()
    text.add_text("comment", "A" * 50_000_000, zip=True)
    cases.append(("zTXt inflating to 50 MB", _file(digit, "PNG", pnginfo=text), {400}))
    cases.append(
        ("ICC profile inflating", _file(digit.convert("RGB"), "PNG", icc_profile=b"\0" * 5_000_000), {400})
    )
    # Every pixel mode, EXIF rotation: real images, classified.
    for mode in ("1", "P", "LA", "RGBA", "I;16"):
        cases.append((f"PNG in mode {mode}", _file(digit.convert(mode), "PNG"), {200}))
    cases.append(("TIFF of floats", _file(digit.convert("F"), "TIFF"), {415}))
    cases.append(("CMYK JPEG", _file(digit.convert("CMYK"), "JPEG"), {200}))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    cases.append(("EXIF-rotated JPEG", _file(digit, "JPEG", exif=exif), {200}))
    # Animations: refused, not cut to a frame; WebP is not accepted at all.
    frames = [digit, digit.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    for fmt, status in (("GIF", 400), ("PNG", 400), ("WEBP", 415)):
        animated = _file(frames[0], fmt, save_all=True, append_images=frames[1:])
        cases.append((f"animated {fmt}", animated, {status}))
    # Polyglots: an image with a ZIP archive after it; a ZIP archive with a PNG signature in front.
    cases.append(("PNG + ZIP", _file(digit, "PNG") + b"PK\x03\x04" + bytes(200), {200}))
    cases.append(("PNG signature + ZIP", b"\x89PNG\r\n\x1a\n" + b"PK\x03\x04" + bytes(200), {400}))
    cases.append(("SVG", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', {400}))
    return cases


def _hostile_bodies(example: str) -> list[tuple[str, bytes, dict[str, str], set[int]]]:
    """(name, raw body, headers, acceptable statuses) for /inference."""
    json_type = {"Content-Type": "application/json"}
    deep = b'{"image": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    return [
        ("deeply nested JSON", deep, json_type, {400, 422}),
        ("a 1.9 MB string", json.dumps({"image": "A" * 1_900_000}).encode(), json_type, {400}),
        ("NaN", b'{"image": NaN}', json_type, {400, 422}),
        ("Infinity", b'{"image": Infinity}', json_type, {400, 422}),
        ("invalid UTF-8", b'{"image": "\xff\xfe\xfa"}', json_type, {400, 422}),
        (
            "duplicate keys",
            json.dumps({"image": "@@"})[:-1].encode() + b', "image": "' + example.encode() + b'"}',
            json_type,
            {200, 400},
        ),  # fmt: skip
        ("null", b"null", json_type, {400, 422}),
        ("a list", b"[]", json_type, {400, 422}),
        ("a number", b"7", json_type, {400, 422}),
        ("empty", b"", json_type, {400, 422}),
        ("XML", b"<image>abc</image>", {"Content-Type": "application/xml"}, {400, 415, 422}),
        ("a form", b"image=abc", {"Content-Type": "application/x-www-form-urlencoded"}, {415}),
        ("a null byte key", b'{"ima\\u0000ge": "abc"}', json_type, {422}),
    ]


def _rss_mb(pid: int) -> float:
    server = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [server, *server.children(recursive=True)]) / 2**20


def test_a_hostile_corpus_gets_4xx_answers_and_leaves_the_server_up_and_small(served):
    url, pid, log = served
    headers = {"Authorization": f"Bearer {INFERENCE_TOKEN}"}
    example = base64.b64encode(_file(Image.new("L", (28, 28)), "PNG")).decode()
    for _ in range(20):  # warm both workers before the memory baseline
        assert requests.post(f"{url}/inference", json={"image": example}, headers=headers, timeout=30).ok
    before = _rss_mb(pid)
    wrong = []
    for name, raw, expected in _hostile_images():
        text = base64.b64encode(raw).decode()
        for path, body in (
            ("/inference", {"image": text}),
            ("/inference/batch", {"images": [example, text]}),
        ):
            r = requests.post(url + path, json=body, headers=headers, timeout=60)
            if r.status_code not in expected or (r.status_code >= 400 and "error" not in r.json()):
                wrong.append((name, path, r.status_code, r.text[:200]))
    for name, raw, extra, expected in _hostile_bodies(example):
        r = requests.post(url + "/inference", data=raw, headers={**headers, **extra}, timeout=60)
        if r.status_code not in expected or (r.status_code >= 400 and "error" not in r.json()):
            wrong.append((name, "/inference", r.status_code, r.text[:200]))
    assert not wrong, wrong
    after = _rss_mb(pid)
    print(f"server RSS {before:.0f} MB before the corpus, {after:.0f} MB after")
    assert after - before < 50
    assert requests.post(f"{url}/inference", json={"image": example}, headers=headers, timeout=30).ok
    assert "Traceback" not in log.read_text()
