"""What every front door (CLI, daemon) needs: a loaded model, the profile store, the index."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from voiceid.models.embedder import Embedder, ModelPrecision
from voiceid.models.inference import Device
from voiceid.profiles.index import ProfileIndex
from voiceid.profiles.store import ProfileStore
from voiceid.security.templates import TemplateKey


@dataclass
class App:
    embedder: Embedder
    store: ProfileStore

    @classmethod
    def open(
        cls,
        model: str,
        *,
        db: Path | str | None = None,
        device: Device = "auto",
        threads: int | None = None,
        sha256: str | None = None,
        fetch: bool = True,
        precision: ModelPrecision = "auto",
        key: TemplateKey | None = None,
    ) -> App:
        """``key``: the profile templates are encrypted with it (see ProfileStore.open)."""
        store = ProfileStore.open(db, key=key)
        try:
            embedder = Embedder.load(
                model,
                device=device,
                threads=threads,
                fetch=fetch,
                sha256=sha256,
                precision=precision,
            )
        except BaseException:
            store.close()
            raise
        return cls(embedder, store)

    @property
    def fingerprint(self) -> str:
        return self.embedder.fingerprint

    @property
    def model_name(self) -> str:
        return self.embedder.card.name

    def index(self) -> ProfileIndex:
        """The centroids of every profile enrolled with this model, as one matrix."""
        return ProfileIndex.from_profiles(
            self.store.list(), self.fingerprint, model_name=self.model_name
        )

    def threshold(self, override: float | None = None) -> float:
        """Decision threshold: ``override``, else stored for this model, else the card's."""
        if override is not None:
            return override
        stored = self.store.get_threshold(self.fingerprint)
        return stored if stored is not None else self.embedder.card.threshold

    def stream_threshold(self, override: float | None = None) -> float:
        """Enter threshold of the streaming decider (1-2 s windows score lower than utterances).

        ``override`` (config), else the card's measured window threshold, else ``threshold()``.
        """
        if override is not None:
            return override
        card = self.embedder.card
        return card.stream_threshold if card.stream_threshold is not None else self.threshold()

    def close(self) -> None:
        self.store.close()
