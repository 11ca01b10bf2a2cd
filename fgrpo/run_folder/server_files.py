"""The reward server's files in a run folder: its address (`reward-server.json`) and the run's
token (`reward-server.token`). Part of RunFolder (fgrpo.run_folder), kept apart for size."""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path

from fgrpo.fileio import atomic_write_json, read_json

REWARD_SERVER, REWARD_TOKEN = "reward-server.json", "reward-server.token"


class RewardServerFiles:
    """RunFolder's reward-server methods (needs `self.path`)."""

    path: Path

    @property
    def reward_server_file(self) -> Path:
        return self.path / REWARD_SERVER

    def write_server_address(self, url: str, path: Path | None = None) -> None:
        atomic_write_json(
            path or self.reward_server_file,
            {"url": url, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time()},
        )

    def read_server_address(self, path: Path | None = None) -> str | None:
        found = read_json(path or self.reward_server_file)
        return found.get("url") if isinstance(found, dict) else None

    @property
    def server_token_file(self) -> Path:
        return self.path / REWARD_TOKEN

    def server_token(self, create: bool = False) -> str | None:
        """The run's reward-server token (a random secret per run, readable by its owner only);
        with `create`, made when missing. Several processes may create it at once: the first
        exclusive create wins and every caller returns that one."""
        f = self.server_token_file
        if create and not f.exists():
            self.path.mkdir(parents=True, exist_ok=True)
            token = secrets.token_urlsafe(32)
            try:
                fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as out:
                    out.write(token)
                    out.flush()
                    os.fsync(out.fileno())
        for _ in range(50):  # another process may have created it and not yet written it
            try:
                text = f.read_text().strip()
            except FileNotFoundError:
                return None
            if text:
                return text
            time.sleep(0.1)
        raise ValueError(f"{f}: empty reward-server token file; remove it and launch again")

    def clear_server_address(self) -> None:
        """Forget a previous server's address before a new one starts for the run."""
        self.reward_server_file.unlink(missing_ok=True)
