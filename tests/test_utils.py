import base64
import io

import pytest
import torch
from PIL import Image

from mindtrace.utils import (
    ascii_to_pil,
    atomic_write,
    available_cores,
    file_digest,
    flatten_dict,
    ifnone,
    pil_to_ascii,
    pil_to_tensor,
    tensor_to_pil,
)


def test_ifnone():
    assert ifnone(None, 5) == 5
    assert ifnone(0, 5) == 0
    assert ifnone("", "x") == ""


def test_flatten_dict_contract_example():
    assert flatten_dict({"a": 1, "b": {"c": 2, "d": {"e": 3}}}) == {"a": 1, "b.c": 2, "b.d.e": 3}


def test_flatten_dict_separator_parent_and_empty_mapping():
    assert flatten_dict({"x": {"y": 1}}, parent_key="p", sep="/") == {"p/x/y": 1}
    assert flatten_dict({"x": {}}) == {"x": {}}


def test_available_cores_is_positive_and_bounded():
    assert 1 <= available_cores() <= (torch.get_num_threads() + 1024)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "1"])
def test_base64_roundtrip_keeps_pixels(mode):
    img = Image.effect_noise((28, 28), 50).convert(mode)
    back = ascii_to_pil(pil_to_ascii(img))
    assert back.size == (28, 28)
    assert back.mode == img.mode
    assert list(back.getdata()) == list(img.getdata())


def test_ascii_to_pil_accepts_data_url():
    s = pil_to_ascii(Image.new("L", (5, 4), 7))
    assert ascii_to_pil(f"data:image/png;base64,{s}").getpixel((0, 0)) == 7


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not base64 !!", "invalid base64"),
        (base64.b64encode(b"hello world, not an image").decode(), "not an image"),
        ("", "empty image"),
        ("data:image/png,abc", "must be base64"),
    ],
)
def test_ascii_to_pil_refuses_bad_input_with_clear_message(text, message):
    with pytest.raises(ValueError, match=message):
        ascii_to_pil(text)


def test_ascii_to_pil_refuses_truncated_png():
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).save(buf, format="PNG")
    truncated = base64.b64encode(buf.getvalue()[:200]).decode()
    with pytest.raises(ValueError, match="not a readable PNG image"):
        ascii_to_pil(truncated)


def test_pil_tensor_roundtrip():
    img = Image.effect_noise((6, 4), 80)
    t = pil_to_tensor(img)
    assert t.shape == (1, 4, 6) and t.dtype == torch.float32
    assert t.min() >= 0.0 and t.max() <= 1.0
    assert list(tensor_to_pil(t).getdata()) == list(img.getdata())


def test_pil_to_tensor_rgb_and_tensor_to_pil_uint8():
    rgb = Image.new("RGB", (3, 2), (255, 0, 51))
    t = pil_to_tensor(rgb)
    assert t.shape == (3, 2, 3)
    assert t[:, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.2])
    assert tensor_to_pil((t * 255).round().to(torch.uint8)).getpixel((0, 0)) == (255, 0, 51)
    assert tensor_to_pil(torch.zeros(2, 3)).size == (3, 2)


def test_file_digest(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert file_digest(p, "sha256") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_write_replaces_existing_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_write(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
