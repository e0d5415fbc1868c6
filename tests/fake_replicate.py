"""The local fake Replicate API used by the tests (its code lives in the package, so notebooks can
start it too): `FakeReplicate().start()` listens on 127.0.0.1 for the official `replicate` client."""

from sdlab.testing.fakes.replicate import GENERIC_VERSION, MODELS, SDXL_VERSION, TRAINED_VERSION, FakeReplicate

__all__ = ["FakeReplicate", "GENERIC_VERSION", "MODELS", "SDXL_VERSION", "TRAINED_VERSION"]
