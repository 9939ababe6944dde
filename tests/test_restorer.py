"""The base-layer restorer (kpcodec.models.restorer) and the shipped models that carry it
(fomm-256-hybrid-v3, and -v4, trained on base frames coded without AV1's CDEF and loop restoration):
a learned upsampler on the path of a stream of the base layer alone only."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kpcodec import bitstream
from kpcodec.codec.decoder import Decoder
from kpcodec.models.registry import DEFAULT_HYBRID_MODEL, build_model, get_config, load_model
from kpcodec.models.restorer import BaseRestorer
from kpcodec.options import DecodeOptions

from conftest import SAMPLE, sample_kpc


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


def test_a_restore_full_model_restores_base_frames_at_the_model_size_too():
    net = build_model("fomm-256-hybrid-restore-full").eval()
    torch.nn.init.normal_(net.restorer.last.weight, std=0.05)
    full = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        restored = net.base_image(full, restore=True)
        assert torch.equal(restored, net.restorer(full))
        assert torch.equal(net.base_image(full), full)  # a hybrid file's base frame: as it came
    assert (restored - full).abs().mean() > 1e-3
    assert net.restores(256) and net.restores(128)
    plain = build_model("fomm-256-hybrid-restore")
    assert not plain.restores(256) and plain.restores(128) and not build_model("fomm-256-hybrid").restores(128)
    assert set(net.state_dict()) == set(plain.state_dict())  # the same tensors: only where the restorer runs differs


@pytest.mark.parametrize("name", ["fomm-256-hybrid-v3", "fomm-256-hybrid-v4", "fomm-256-hybrid-v5"])
def test_v3_v4_and_v5_are_v2_with_a_trained_restorer(name):
    assert DEFAULT_HYBRID_MODEL == "fomm-256-hybrid-v5" and get_config("fomm-256-hybrid-restore").base_restorer
    assert load_model(name).cfg.restore_full == (name == "fomm-256-hybrid-v5")  # -v5 restores 256-px base frames too
    v2, v = load_model("fomm-256-hybrid-v2").state_dict(), load_model(name).state_dict()
    assert set(v) - set(v2) == {k for k in v if k.startswith("restorer.")} != set()
    assert all(torch.equal(v2[k], v[k]) for k in v2)  # hybrid files render as with v2
    assert v["restorer.last.weight"].abs().max() > 0  # trained: not the bicubic upsample


@pytest.mark.parametrize("before,after", [("fomm-256-hybrid-v3", "fomm-256-hybrid-v4"), ("fomm-256-hybrid-v4", "fomm-256-hybrid-v5")])
def test_each_restorer_is_the_one_before_trained_further(before, after):
    a, b = load_model(before).state_dict(), load_model(after).state_dict()
    assert not torch.equal(a["restorer.last.weight"], b["restorer.last.weight"])
    assert (a["restorer.last.weight"] - b["restorer.last.weight"]).abs().max() < a["restorer.last.weight"].abs().max()


@pytest.fixture(scope="module")
def alone_file(tmp_path_factory):
    return sample_kpc(tmp_path_factory.mktemp("restore"), "128@4:50,alone,placed", frames=12)


def _decoded(path, model=None):
    return np.stack(list(Decoder(bitstream.loads(path.read_bytes()), DecodeOptions(audio=False, model=model)).frames()))


def test_a_file_of_the_base_layer_alone_names_the_default_and_decodes_through_its_restorer(alone_file):
    assert bitstream.loads(alone_file.read_bytes()).header.model == DEFAULT_HYBRID_MODEL
    with_restorer, without = _decoded(alone_file), _decoded(alone_file, "fomm-256-hybrid-v2")
    assert with_restorer.shape == without.shape == (12, 256, 256, 3)
    diff = np.abs(with_restorer.astype(int) - without).mean()
    assert 0.05 < diff < 10  # restored, not replaced


def test_a_hybrid_file_renders_the_same_with_the_default_and_v2(tmp_path):
    path = sample_kpc(tmp_path, "64@2:60", frames=6)
    assert bitstream.loads(path.read_bytes()).header.model == DEFAULT_HYBRID_MODEL
    assert np.array_equal(_decoded(path), _decoded(path, "fomm-256-hybrid-v2"))


def test_the_trainer_codes_its_data_through_the_base_layer_resumes_and_exports(tmp_path, monkeypatch):
    from conftest import make_train_data
    from kpcodec.train import restorer as tr

    data = make_train_data(tmp_path / "data")
    monkeypatch.setattr(tr, "SETTINGS", ((64, 4), (96, 3)))
    monkeypatch.setattr(tr, "FULL_SETTINGS", ((256, 4), (256, 6)))
    out, cache, full = tmp_path / "run", tmp_path / "cache", tmp_path / "full"
    args = ["--data", str(data), "--out", str(out), "--cache", str(cache), "--save-every", "1"]
    tr.main(args + ["--steps", "2", "--full-cache", str(full)])
    pairs = tr.load_pairs(sorted(cache.glob("train-*.npz")))
    assert {p[0][:2] for p in pairs} == {(64, 4), (96, 3)}  # each clip at both settings
    assert all(small.shape[1:] == (s[0], s[0], 3) and target.shape[1:] == (256, 256, 3) and len(small) == len(target)
               for s, small, target in pairs)
    at_full = tr.load_pairs(sorted(full.glob("train-*.npz")), max_size=256)  # and at the model size
    assert {p[0][:2] for p in at_full} == {(256, 4), (256, 6)} and all(p[1].shape[1:] == (256, 256, 3) for p in at_full)
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2
    tr.main(args + ["--steps", "3", "--lr", "1e-4"])
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 3 and ck["opt"]["param_groups"][0]["lr"] == 1e-4
    tr.main(args + ["--export", str(tmp_path / "m.pt"), "--into", "fomm-256-hybrid-v2"])
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    net = build_model("fomm-256-hybrid-restore")
    net.load_state_dict(state)  # every tensor of the config, none more
    assert torch.equal(state["restorer.last.weight"], ck["model"]["last.weight"])
    # a 3-frame restorer started from the 1-frame one's weights (widened), exported into a model of its config
    tr.main(args + ["--export", str(tmp_path / "r1.pt")])
    out3 = ["--data", str(data), "--out", str(tmp_path / "run3"), "--cache", str(cache), "--frames", "3"]
    tr.main(out3 + ["--steps", "1", "--init", str(tmp_path / "r1.pt")])
    ck3 = torch.load(tmp_path / "run3" / "checkpoint.pt", weights_only=False)
    assert ck3["step"] == 1 and ck3["arch"][-1] == 3 and ck3["model"]["body.0.weight"].shape[1] == 36
    tr.main(out3 + ["--export", str(tmp_path / "m3.pt"), "--into", "fomm-256-hybrid-v2"])
    build_model("fomm-256-hybrid-restore3").load_state_dict(torch.load(tmp_path / "m3.pt", weights_only=True))


def _three_frame(seed: int = 0) -> BaseRestorer:
    """A 3-frame restorer whose every weight (the neighbours' too) is random: its output depends on them."""
    torch.manual_seed(seed)
    r = BaseRestorer(frames=3).eval()
    torch.nn.init.normal_(r.last.weight, std=0.05)
    return r


def test_a_three_frame_restorer_widened_from_a_one_frame_one_starts_as_it():
    one = BaseRestorer().eval()
    torch.nn.init.normal_(one.last.weight, std=0.05)
    three = BaseRestorer(frames=3)
    three.widen(one.state_dict())
    up, before, after = torch.rand(3, 2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(three(up, before, after), one(up), atol=1e-6)
        assert torch.equal(three(up), three(up, up, up))  # a missing neighbour is the frame itself
    with pytest.raises(ValueError):
        BaseRestorer(frames=2)


def test_a_three_frame_restorer_sees_the_neighbours_in_a_sequence_and_given():
    net = build_model("fomm-256-hybrid-restore3").eval()
    net.restorer = _three_frame()
    small = torch.rand(4, 3, 128, 128)
    with torch.inference_mode():
        seq = net.base_image(small, restore=True)
        one = net.base_image(small[1:2], restore=True, before=small[0:1], after=small[2:3])
        alone = net.base_image(small[1:2], restore=True)
    assert torch.allclose(seq[1:2], one, atol=1e-6)
    assert (seq[1:2] - alone).abs().max() > 1e-3  # the neighbours count


def test_the_decoder_gives_a_three_frame_restorer_the_base_frames_around_each(tmp_path, monkeypatch):
    """Streaming (packet by packet) or whole: base frame n of a stream of the base layer alone is
    restored with base frames n - 1 and n + 1 beside it (the ends their own), as the model
    restores the whole sequence at once."""
    from kpcodec.bitstream import packets as pk
    from kpcodec.media import baselayer
    from kpcodec.models.frames import frames_to_tensor, tensor_to_frames

    path = sample_kpc(tmp_path, "128@4:50,alone", frames=14)
    s = bitstream.loads(path.read_bytes())
    net = load_model(s.header.model, inference=True)
    monkeypatch.setattr(net, "restorer", _three_frame(1))
    one = DecodeOptions(audio=False, threads=1)
    whole = np.stack(list(Decoder(s, one).frames()))
    packets = pk.stream_packets(s, 1)  # a base frame a packet: the decoder waits for the next
    dec = Decoder(packets[0], one)
    streamed = [f for p in packets[1:] for f in dec.push(p)] + dec.flush()
    assert np.array_equal(np.stack(streamed), whole)
    with torch.inference_mode():
        want = tensor_to_frames(net.base_image(frames_to_tensor(baselayer.decode_clip(s.base.packets)), restore=True))
    assert len(want) == 4
    for n in range(4):
        assert np.array_equal(whole[4 * n], want[n]), n


def test_base_frames_the_decoder_restores_are_coded_without_av1s_cdef_and_loop_restoration(monkeypatch):
    from kpcodec.media import baselayer

    from kpcodec.media import video

    frames = np.stack(list(video.read_frames(SAMPLE, 256))[:8])
    alone, fused = (baselayer.BaseLayerSettings(96, 2, 50, alone=a) for a in (True, False))
    assert alone.restored and not fused.restored
    assert not baselayer.BaseLayerSettings(256, 2, 50, alone=True).restored  # at the model size: not restored
    coded = {s: baselayer.encode_clip(frames, s, 25, preset=8) for s in (alone, fused)}
    assert coded[alone] != coded[fused]
    monkeypatch.setattr(baselayer, "RESTORED_SVT_PARAMS", "")
    assert baselayer.encode_clip(frames, alone, 25, preset=8) == coded[fused]  # the only difference
