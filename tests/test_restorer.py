"""The base-layer restorer (kpcodec.models.restorer) and the shipped model that carries it
(fomm-256-hybrid-v3): a learned upsampler on the path of a stream of the base layer alone only."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kpcodec import bitstream
from kpcodec.codec.decoder import Decoder
from kpcodec.models.registry import DEFAULT_HYBRID_MODEL, build_model, get_config, load_model
from kpcodec.models.restorer import BaseRestorer
from kpcodec.options import DecodeOptions

from conftest import sample_kpc


def test_an_untrained_restorer_is_the_bicubic_upsample():
    up = torch.rand(2, 3, 32, 32)
    assert torch.equal(BaseRestorer()(up), up)


def test_the_model_restores_only_upsampled_frames_of_the_base_layer_alone():
    net = build_model("fomm-256-hybrid-restore").eval()
    torch.nn.init.normal_(net.restorer.last.weight, std=0.05)
    small = torch.rand(1, 3, 128, 128)
    with torch.inference_mode():
        bicubic = net.base_image(small)
        restored = net.base_image(small, restore=True)
        full = torch.rand(1, 3, 256, 256)
        assert torch.equal(net.base_image(full, restore=True), full)  # not upsampled: as it came
    assert bicubic.shape == restored.shape == (1, 3, 256, 256)
    assert (restored - bicubic).abs().mean() > 1e-3
    assert build_model("fomm-256-hybrid").restorer is None


def test_v3_is_v2_with_a_trained_restorer():
    assert DEFAULT_HYBRID_MODEL == "fomm-256-hybrid-v3" and get_config("fomm-256-hybrid-restore").base_restorer
    v2, v3 = load_model("fomm-256-hybrid-v2").state_dict(), load_model("fomm-256-hybrid-v3").state_dict()
    assert set(v3) - set(v2) == {k for k in v3 if k.startswith("restorer.")} != set()
    assert all(torch.equal(v2[k], v3[k]) for k in v2)  # hybrid files render as with v2
    assert v3["restorer.last.weight"].abs().max() > 0  # trained: not the bicubic upsample


@pytest.fixture(scope="module")
def alone_file(tmp_path_factory):
    return sample_kpc(tmp_path_factory.mktemp("restore"), "128@4:50,alone,placed", frames=12)


def _decoded(path, model=None):
    return np.stack(list(Decoder(bitstream.loads(path.read_bytes()), DecodeOptions(audio=False, model=model)).frames()))


def test_a_file_of_the_base_layer_alone_names_v3_and_decodes_through_its_restorer(alone_file):
    assert bitstream.loads(alone_file.read_bytes()).header.model == "fomm-256-hybrid-v3"
    with_restorer, without = _decoded(alone_file), _decoded(alone_file, "fomm-256-hybrid-v2")
    assert with_restorer.shape == without.shape == (12, 256, 256, 3)
    diff = np.abs(with_restorer.astype(int) - without).mean()
    assert 0.05 < diff < 10  # restored, not replaced


def test_a_hybrid_file_renders_the_same_with_v3_and_v2(tmp_path):
    path = sample_kpc(tmp_path, "64@2:60", frames=6)
    assert bitstream.loads(path.read_bytes()).header.model == "fomm-256-hybrid-v3"
    assert np.array_equal(_decoded(path), _decoded(path, "fomm-256-hybrid-v2"))


def test_the_trainer_codes_its_data_through_the_base_layer_resumes_and_exports(tmp_path, monkeypatch):
    from conftest import make_clip
    from kpcodec.train import restorer as tr

    data = tmp_path / "data"
    (data / "talking-heads" / "train").mkdir(parents=True)
    rows = ["file,split,source_repo,source_path,license,identity,fps,frames,width,height,seconds,generated,notes"]
    for i in range(2):
        make_clip(data / f"talking-heads/train/c{i}.mp4", frames=12, size=(64, 64))
        rows.append(f"talking-heads/train/c{i}.mp4,train,x,x,MIT,p{i},25,12,64,64,0.48,no,")
    (data / "manifest.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(tr, "SETTINGS", ((64, 4), (96, 3)))
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = ["--data", str(data), "--out", str(out), "--cache", str(cache), "--save-every", "1"]
    tr.main(args + ["--steps", "2"])
    pairs = tr.load_pairs(sorted(cache.glob("train-*.npz")))
    assert {p[0][:2] for p in pairs} == {(64, 4), (96, 3)}  # each clip at both settings
    assert all(small.shape[1:] == (s[0], s[0], 3) and target.shape[1:] == (256, 256, 3) and len(small) == len(target)
               for s, small, target in pairs)
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2
    tr.main(args + ["--steps", "3", "--lr", "1e-4"])
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 3 and ck["opt"]["param_groups"][0]["lr"] == 1e-4
    tr.main(args + ["--export", str(tmp_path / "m.pt"), "--into", "fomm-256-hybrid-v2"])
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    net = build_model("fomm-256-hybrid-restore")
    net.load_state_dict(state)  # every tensor of the config, none more
    assert torch.equal(state["restorer.last.weight"], ck["model"]["last.weight"])
