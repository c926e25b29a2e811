"""`tracefuse demo`: train a character-level LSTM language model and let it write.

The corpus is tracefuse's own source code (or a text file you give), the model is
Embedding -> LSTM -> Linear trained with cross-entropy, clip_grad_norm_ and Adam: the workload
tracefuse exists for, end to end, in a form anyone can run on a laptop CPU.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import tracefuse
from tracefuse import nn
from tracefuse.nn import functional as F

QUICK = dict(steps=400, hidden=128, seq_len=32, batch=16)
FULL = dict(steps=1500, hidden=256, seq_len=64, batch=32)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help=f"a short run (< 1 min on 2 cores): {QUICK['steps']} steps, hidden {QUICK['hidden']}")
    parser.add_argument("--steps", type=int, help="training steps")
    parser.add_argument("--hidden", type=int, help="LSTM hidden size")
    parser.add_argument("--seq-len", type=int, help="characters per training sequence")
    parser.add_argument("--batch", type=int, help="sequences per step")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--text", type=Path, help="train on this UTF-8 text file instead of tracefuse's source")
    parser.add_argument("--generate", type=int, default=240, help="characters to generate at the end")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eager", action="store_true",
                        help="run the training step eagerly instead of as one compiled graph")


def load_corpus(path: Path | None) -> str:
    """The training text: a user's file, or every .py file of the tracefuse package."""
    if path is not None:
        return path.read_text(encoding="utf-8")
    package = Path(tracefuse.__file__).parent
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(package.rglob("*.py")))


class CharLSTM(nn.Module):
    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden // 2)
        self.lstm = nn.LSTM(hidden // 2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, chars, state=None):
        out, state = self.lstm(self.embed(chars), state)
        return self.head(out), state


def _batches(codes: np.ndarray, seq_len: int, batch: int, rng: np.random.Generator):
    """Random windows of the corpus: inputs and the next-character targets."""
    while True:
        starts = rng.integers(0, len(codes) - seq_len - 1, size=batch)
        window = np.stack([codes[s:s + seq_len + 1] for s in starts])
        yield tracefuse.from_numpy(window[:, :-1].copy()), tracefuse.from_numpy(window[:, 1:].copy())


def _train_step(model, optimizer):
    """One optimisation step; `tracefuse demo` compiles it whole (forward, backward, clip, Adam)."""
    def step(x, y):
        optimizer.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        return loss
    return step


def _loss(model, x, y):
    logits, _ = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def generate(model, vocab: list[str], prompt: str, length: int, device, temperature: float = 0.8,
             rng: np.random.Generator | None = None) -> str:
    """Sample `length` characters after `prompt`, carrying the LSTM state from step to step."""
    rng = rng or np.random.default_rng(0)
    index = {c: i for i, c in enumerate(vocab)}
    codes = [index[c] for c in prompt if c in index] or [0]
    out = []
    model.eval()
    with tracefuse.no_grad():
        logits, state = model(tracefuse.tensor([codes], device=device))
        for _ in range(length):
            probs = F.softmax(logits[0, -1] / temperature, dim=-1).cpu().numpy().astype(np.float64)
            code = int(rng.choice(len(vocab), p=probs / probs.sum()))
            out.append(vocab[code])
            logits, state = model(tracefuse.tensor([[code]], device=device), state)
    model.train()
    return prompt + "".join(out)


def _progress():
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]training"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[rate]:,.0f} chars/s"),
                    TimeRemainingColumn())


def run(args: argparse.Namespace) -> int:
    config = dict(QUICK if args.quick else FULL)
    for key in config:
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    tracefuse.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    device = tracefuse.device(args.device)

    text = load_corpus(args.text)
    vocab = sorted(set(text))
    lookup = {c: i for i, c in enumerate(vocab)}
    codes = np.fromiter((lookup[c] for c in text), dtype=np.int64, count=len(text))
    if len(codes) <= config["seq_len"] + 1:
        raise SystemExit(f"tracefuse demo: the text has {len(codes)} characters; need more than {config['seq_len'] + 1}")

    model = CharLSTM(len(vocab), config["hidden"]).to(device)
    optimizer = tracefuse.optim.Adam(model.parameters(), lr=args.lr)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tracefuse demo: char-level LSTM, {len(text):,} characters, vocabulary {len(vocab)}, "
          f"hidden {config['hidden']}, {n_params:,} parameters, device {device}, "
          f"{'eager' if args.eager else 'compiled'} training step")

    batches = _batches(codes, config["seq_len"], config["batch"], rng)
    held_out = [t.to(device) for t in next(_batches(codes, config["seq_len"], 64, np.random.default_rng(args.seed + 1)))]
    with tracefuse.no_grad():
        loss_before = _loss(model, *held_out).item()

    step_fn = _train_step(model, optimizer)
    if not args.eager:
        step_fn = tracefuse.compile(step_fn)
    chars_per_step = config["seq_len"] * config["batch"]
    start = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("train", total=config["steps"], loss=float("nan"), rate=0.0)
        for step in range(config["steps"]):
            x, y = next(batches)
            loss = step_fn(x.to(device), y.to(device))
            elapsed = time.perf_counter() - start
            progress.update(task, advance=1, loss=loss.item(), rate=chars_per_step * (step + 1) / elapsed)
    seconds = time.perf_counter() - start

    with tracefuse.no_grad():
        loss_after = _loss(model, *held_out).item()
    print("\n--- generated ---")
    print(generate(model, vocab, "def ", args.generate, device, rng=rng))
    print("-----------------\n")
    print(f"held-out loss: {loss_before:.3f} -> {loss_after:.3f}  "
          f"({config['steps']} steps, {1000 * seconds / config['steps']:.1f} ms/step, "
          f"{chars_per_step * config['steps'] / seconds:,.0f} chars/s)")
    return 0 if loss_after < loss_before else 1
