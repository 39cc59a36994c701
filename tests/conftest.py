"""What several test files share: the project root on sys.path, a tiny training run (`tiny`, `tiny_run`) and its
data, tiny Hugging Face checkpoints and BPE files, a command line's one-line error (`cli_error`), and the real
GPT-2 BPE from ../shared when present (tests that need it skip otherwise)."""
import json
import os
import random
import socket
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train as T  # noqa: E402
from imgpt import tokenizers  # noqa: E402
from imgpt.cli import run_cli  # noqa: E402

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()
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


def write_data(path: str, n: int = 24) -> str:
    """Alpaca records of very different lengths (some get truncated at block_size 64), some with an input."""
    rng = random.Random(0)
    with open(path, "w") as f:
        for i in range(n):
            rec = {"instruction": " ".join(rng.choices(WORDS, k=rng.randint(1, 14))),
                   "input": " ".join(rng.choices(WORDS, k=rng.randint(1, 4))) if i % 3 == 0 else "",
                   "output": " ".join(rng.choices(WORDS, k=rng.randint(1, 6)))}
            f.write(json.dumps(rec) + "\n")
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> str:
    return write_data(str(tmp_path_factory.mktemp("data") / "alpaca.jsonl"))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and far more steadily on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(data: str, out_dir: str, **kw) -> T.TrainConfig:
    """17 training examples: an epoch is steps of 8, 8 and 1 examples, so short steps are covered too."""
    base = dict(out_dir=out_dir, data=data, val_size=4, num_examples=17, n_layer=2, n_head=2, n_embd=32,
                block_size=64, batch_size=8, micro_batch_size=8, max_steps=3, lr=3e-4, min_lr=3e-5, eval_interval=0,
                eval_examples=4, train_eval_size=4, seed=0, device="cpu", threads=1)
    return T.TrainConfig(**{**base, **kw})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leave_spawned_worker() -> None:
    """End a spawned worker whose work is done and whose process group is destroyed, skipping the interpreter's
    shutdown: there gloo (torch 2.14.1) sometimes aborts the process ("terminate called without an active
    exception", SIGABRT) after destroy_process_group has returned (CI once; here 2 runs in 112; in the one of them
    that printed a line after destroy_process_group, both ranks had printed it), and spawn reports that abort as
    the test failing. A worker that raises never gets here: spawn still reports its error."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def log_records(out_dir: str) -> list[dict]:
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def hf_model(n_layer, n_head, n_embd, n_positions, vocab_size, seed=0):
    """A random reference GPT-2 whose greedy continuations vary (strong position embeddings keep them from
    collapsing into one repeated token, as GPT-2's own 0.02 init does)."""
    transformers = pytest.importorskip("transformers")  # the reference, from requirements-dev.txt
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions,
                                  vocab_size=vocab_size, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, (1.0 if "wpe" in name else 0.2) if p.dim() > 1 else 0.1)
    return model


def write_tiny_bpe(directory, names=("vocab.json", "merges.txt")):
    """GPT-2's 256 byte tokens, three merges (he, ll, Ġw where Ġ spells a space), then <|endoftext|> = 259."""
    decode = tokenizers.gym_byte_decoder()
    vocab = {c: i for i, c in enumerate(decode)}
    for merged in ("he", "ll", "Ġw"):
        vocab[merged] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, names[0]), "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(os.path.join(directory, names[1]), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\nh e\nl l\nĠ w\n")
    return vocab




def tiny_run(tmp_path, **kw) -> T.TrainConfig:
    os.makedirs(tmp_path, exist_ok=True)
    path = tmp_path / "data.jsonl"
    rng = random.Random(0)
    with open(path, "w") as f:
        for _ in range(24):
            f.write(json.dumps({"instruction": " ".join(rng.choices(WORDS[:12], k=rng.randint(2, 12))),
                                "output": " ".join(rng.choices(WORDS[:12], k=rng.randint(1, 5)))}) + "\n")
    base = dict(out_dir=str(tmp_path / "out"), data=str(path), val_size=4, n_layer=2, n_head=2, n_embd=32,
                block_size=64, batch_size=8, micro_batch_size=4, max_steps=2, lr=1e-3, eval_interval=0,
                eval_examples=4, train_eval_size=4, seed=0, device="cpu", loss="it")
    return T.TrainConfig(**{**base, **kw})


HELLASWAG = "A man sits.\n0\nhe stands.\nhe sings.\nhe runs.\nhe sleeps.\n"


def cli_error(main, argv: list[str], monkeypatch, capsys) -> str:
    """Run a program's main() as the command line would; return its error: exit code 2, no traceback, one line
    (the last on stderr, after any progress bar)."""
    monkeypatch.setattr(sys, "argv", argv)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main)
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\n")[-1]
    assert exit_info.value.code == 2 and err.count("error:") == 1 and "Traceback" not in err, err
    return last + "\n"


def write_file(path, content: bytes) -> str:
    with open(path, "wb") as f:
        f.write(content)
    return str(path)
