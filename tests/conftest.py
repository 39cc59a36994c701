"""Shared fixtures: the real GPT-2 BPE from ../shared when present (tests that need it skip otherwise)."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
GPT2_BPE_DIR = os.path.join(SHARED_DATA, "gpt2")

# Tiny test models gain nothing from a second thread, and on a busy 2-core machine (or with the DDP tests'
# two processes) oversubscribed threads made steps up to 20x slower.
torch.set_num_threads(1)


@pytest.fixture
def shared_data() -> str:
    if not os.path.isdir(SHARED_DATA):
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture
def gpt2_bpe_dir() -> str:
    """A directory with GPT-2's encoder.json + vocab.bpe (the data-gym names of vocab.json + merges.txt)."""
    if not os.path.isfile(os.path.join(GPT2_BPE_DIR, "encoder.json")):
        pytest.skip("GPT-2 BPE files (../shared/data/gpt2) are absent")
    return GPT2_BPE_DIR
