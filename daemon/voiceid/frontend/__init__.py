"""Feature front-ends: samples in, feature frames out, incrementally."""

from voiceid.frontend.base import FrontEnd, FrontEndSpec

__all__ = ["FrontEnd", "FrontEndSpec", "make_frontend"]


def make_frontend(spec: FrontEndSpec) -> FrontEnd:
    """A fresh incremental front-end for ``spec``."""
    if spec.kind == "kaldi_fbank":
        from voiceid.frontend.fbank import KaldiFbank

        return KaldiFbank()
    from voiceid.frontend.melpower import MelPower40

    return MelPower40()
