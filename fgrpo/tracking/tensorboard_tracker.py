"""TensorBoard: RUN/tensorboard/ through torch.utils.tensorboard.SummaryWriter.

Scalars per tag (fgrpo.tracking.base), the SDE step indices and held-out rewards as histograms,
and each evaluation's samples as animated images (TensorBoard's image plugin plays GIFs; it has
no video plugin) with their captions as text. On resume the writer is opened with
`purge_step` = the checkpoint's step + 1, so TensorBoard hides what a killed launch logged past
the checkpoint and every step appears once (0 on a fresh start: an earlier attempt is hidden).
"""

from __future__ import annotations

from pathlib import Path

from fgrpo.media import gif_bytes, read_video

from .base import FIELD, SampleSet, TrackerError, histograms, scalars


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, log_dir: Path, purge_step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise TrackerError(
                f"{FIELD}: tensorboard needs the tensorboard package (pip install 'fgrpo[tracking]' "
                f"or pip install tensorboard): {e}"
            ) from None
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step, flush_secs=30)

    def log(self, record: dict, samples: SampleSet | None = None) -> None:
        step = int(record["step"])
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, step)
        for tag, values in histograms(record).items():
            import numpy as np

            self.writer.add_histogram(tag, np.asarray(values), step)
        if samples is not None:
            self._samples(samples, step)
        self.writer.flush()

    def _samples(self, samples: SampleSet, step: int) -> None:
        # protobuf builds its message classes when the module loads; tensorboard ships no stubs for them.
        from tensorboard.compat.proto.summary_pb2 import Summary  # pyright: ignore[reportAttributeAccessIssue]

        grid = samples.grid()
        items = ([("samples/grid", *grid)] if grid else []) + [
            (f"samples/prompt-{i:02d}", path, caption) for i, (path, caption) in enumerate(samples.videos())
        ]
        lines = []
        for tag, path, caption in items:
            frames = read_video(path)
            image = Summary.Image(
                height=frames.shape[-2], width=frames.shape[-1], colorspace=3, encoded_image_string=gif_bytes(frames)
            )
            file_writer = self.writer.file_writer
            assert file_writer is not None  # SummaryWriter holds one until close()
            file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
            lines.append(f"| `{tag}` | {caption.replace('|', '/')} |")
        table = f"{samples.tag}\n\n| sample | caption |\n|---|---|\n" + "\n".join(lines)
        self.writer.add_text("samples/captions", table, step)

    def close(self, exit_code: int = 0) -> None:
        self.writer.close()
