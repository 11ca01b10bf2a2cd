"""GIF writing: round-trip, grid tiling, upscaling and atomic replacement."""

import pytest
import torch
from PIL import GifImagePlugin, Image, ImageSequence

from fgrpo import media
from fgrpo.media import make_video_grid, save_video, save_video_grid


def distinct_video(f=5, h=16, w=12):
    """[f, 3, h, w] video whose frames are all different solid greys."""
    levels = torch.linspace(0.0, 1.0, f).view(f, 1, 1, 1)
    return levels.expand(f, 3, h, w).clone()


def read_gif(path):
    with Image.open(path) as im:
        assert isinstance(im, GifImagePlugin.GifImageFile), im.format
        frames = [fr.convert("RGB").copy() for fr in ImageSequence.Iterator(im)]
        return frames, im.info.get("loop"), im.n_frames


def test_save_video_round_trip(tmp_path):
    path = save_video(distinct_video(), tmp_path / "sub" / "v.gif", fps=10)
    assert path == tmp_path / "sub" / "v.gif" and path.exists()
    frames, loop, n = read_gif(path)
    assert n == 5 and len(frames) == 5
    assert all(fr.size == (12, 16) for fr in frames)  # PIL size is (W, H)
    assert loop == 0
    assert frames[0].getpixel((0, 0)) == (0, 0, 0)
    assert frames[-1].getpixel((3, 3)) == (255, 255, 255)


def test_colours_survive(tmp_path):
    video = torch.zeros(2, 3, 4, 4)
    video[0, 0] = 1.0  # red
    video[1, 2] = 1.0  # blue
    frames, _, _ = read_gif(save_video(video, tmp_path / "c.gif"))
    assert frames[0].getpixel((1, 1)) == (255, 0, 0)
    assert frames[1].getpixel((1, 1)) == (0, 0, 255)


def test_grey_channel_and_clamping(tmp_path):
    video = torch.tensor([-1.0, 2.0]).view(2, 1, 1, 1).expand(2, 1, 3, 3)
    frames, _, _ = read_gif(save_video(video, tmp_path / "g.gif"))
    assert frames[0].getpixel((0, 0)) == (0, 0, 0)
    assert frames[1].getpixel((0, 0)) == (255, 255, 255)


def test_grid_size_and_layout(tmp_path):
    b, f, h, w = 5, 4, 8, 6
    videos = torch.zeros(b, f, 3, h, w)
    for i in range(b):
        videos[i, :, 0] = (i + 1) / b  # video i has red level (i+1)/5
    videos[:, :, 1] = torch.linspace(0, 1, f).view(1, f, 1, 1)  # frames differ
    path = save_video_grid(videos, tmp_path / "grid.gif", nrow=3, upscale=2)
    frames, loop, n = read_gif(path)
    assert n == f and loop == 0
    assert frames[0].size == (3 * w * 2, 2 * h * 2)
    # video 4 sits at row 1, col 1; the empty cell (row 1, col 2) is black
    cell_h, cell_w = 2 * h, 2 * w
    pixel = frames[0].getpixel((cell_w + 1, cell_h + 1))
    assert isinstance(pixel, tuple) and pixel[0] == round(255 * 5 / 5)
    assert frames[0].getpixel((2 * cell_w + 1, cell_h + 1)) == (0, 0, 0)


def test_grid_tensor_nearest_upscale_and_default_nrow():
    videos = torch.rand(4, 2, 3, 2, 3)
    grid = make_video_grid(videos, upscale=3)
    assert grid.shape == (2, 3, 2 * 2 * 3, 2 * 3 * 3)  # default nrow = ceil(sqrt(4)) = 2
    # video 3 (row 1, col 1), source pixel (1, 2) fills a 3x3 block
    block = grid[:, :, 6 + 3 : 6 + 6, 9 + 6 : 9 + 9]
    torch.testing.assert_close(block, videos[3, :, :, 1, 2, None, None].expand(2, 3, 3, 3))
    padded = make_video_grid(videos, nrow=4, padding=1)
    assert padded.shape == (2, 3, 2 + 2, 4 * (3 + 1) + 1)


def test_overwrite_is_atomic_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "v.gif"
    save_video(distinct_video(f=3), path)
    save_video(distinct_video(f=4), path)
    assert read_gif(path)[2] == 4
    before = path.read_bytes()

    def boom(self, *args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_video(distinct_video(f=6), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.gif"]


@pytest.mark.parametrize("shape", [(3, 4, 4), (2, 2, 4, 4), (0, 3, 4, 4)])
def test_bad_video_shapes(tmp_path, shape):
    with pytest.raises(ValueError):
        save_video(torch.zeros(shape), tmp_path / "bad.gif")


def test_bad_grid_args(tmp_path):
    with pytest.raises(ValueError):
        save_video_grid(torch.zeros(2, 3, 4, 4), tmp_path / "g.gif")
    with pytest.raises(ValueError):
        save_video_grid(torch.zeros(2, 2, 3, 4, 4), tmp_path / "g.gif", upscale=0)
    with pytest.raises(ValueError):
        media.save_video(torch.zeros(2, 3, 4, 4), tmp_path / "g.gif", fps=0)


# ----- MP4 (PyAV, H.264) and captioned grids


def test_mp4_round_trip_is_h264(tmp_path):
    import av

    video = torch.zeros(6, 3, 15, 21)  # odd sizes: padded to even for yuv420p
    video[:, 0] = torch.linspace(0, 1, 6).view(6, 1, 1)  # red ramps over time
    video[:, 2, :, :10] = 1.0  # blue left part
    path = media.write_video(video, tmp_path / "v.mp4", fps=8)
    assert path == tmp_path / "v.mp4" and sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]
    with av.open(str(path)) as f:
        stream = f.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.codec_context.width, stream.codec_context.height) == (22, 16)
    back = media.read_video(path)
    assert back.shape == (6, 3, 16, 22)
    assert (back[:, :, :15, :21] - video).abs().mean() < 0.03  # lossy, close
    assert back[-1, 0, 7, 15] > 0.9 and back[0, 0, 7, 15] < 0.1 and back[3, 2, 7, 3] > 0.9


def test_write_video_falls_back_to_gif(tmp_path, monkeypatch):
    monkeypatch.setattr(media, "mp4_available", lambda: False)  # as where PyAV is not installed
    path = media.write_video(distinct_video(), tmp_path / "v.mp4")
    assert path == tmp_path / "v.gif" and read_gif(path)[2] == 5
    assert torch.allclose(media.read_video(path), distinct_video(), atol=1 / 255)


def test_captioned_grid_has_a_caption_strip_under_each_cell():
    cells = torch.full((3, 2, 3, 8, 8), 0.5)
    grid = media.captioned_grid(
        cells,
        [["a red kite over a beach", "reward -0.331 -> -0.250"], ["b", "reward +0.1"], ["c", "reward +0.2"]],
        ncol=3,
        min_cell_px=32,
    )
    f, c, h, w = grid.shape
    assert (f, c) == (2, 3) and w == 3 * (32 + 2) + 2
    cell = grid[0, :, 2 : 2 + 32, 2 : 2 + 32]
    assert torch.allclose(cell, torch.full_like(cell, 0.5))  # the video, upscaled 4x
    strip = grid[0, :, 2 + 32 : h - 2, 2 : 2 + 32]
    assert strip.shape[1] > 2 * 11 and strip.max() > 0.8 and strip.min() < 0.15  # light text on dark
    assert torch.equal(grid[0, :, 34:], grid[1, :, 34:])  # the caption stays while the video plays
    with pytest.raises(ValueError):
        media.captioned_grid(cells, [["only one"]])


def test_videos_are_readable_by_the_group_like_any_file(tmp_path):
    """A teammate's `fgrpo report` reads the samples: not mkstemp's 0600, the umask's mode."""
    import os

    from fgrpo.media import write_video

    old = os.umask(0o022)
    try:
        out = write_video(torch.rand(3, 3, 16, 16), tmp_path / "v.mp4", fps=4)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
