"""Training and generation speed of the same character LM, three ways, side by side.

    python benchmarks/throughput.py                 # rnn, gru, lstm; ~3-4 minutes on 2 cores
    python benchmarks/throughput.py --cells lstm --repeats 5 --no-rss
    python benchmarks/throughput.py --size char512  # 2 x 512, V 65, B 64 x 64, E 128: the recurrence dominates
    python benchmarks/throughput.py --size ptb      # 2 x 200, V 10,000, B 20 x 20 (Zaremba's small PTB model)

``--size`` names the three sizes of issue 26 (SIZES below); any size flag given as well overrides it.
On a machine other processes load, ``--threads 1 --clock cpu`` counts this process's CPU seconds
instead of wall seconds: the time others take the core away is not counted, so the ratios compare
the work each variant does (with 2 threads, CPU time would count a thread spinning while it waits
for a descheduled partner).

For each cell kind, one process trains the same language model (by default 1 layer, batch 32,
35 steps, hidden 256, the Jay Chou vocabulary, random ids; one step = forward + cross-entropy +
backward + global-norm clipping + SGD) with:

  a   the naive seed-style loop: per step one_hot(x) @ W_xh + h @ W_hh + b (a stacked
      layer reads the one below's h instead of the one-hot), the head per step, autograd
      for everything (one stacked W_xh for all gates -- kinder to it than the seeds' one
      matrix per gate);
  b1  lyricist.models.RecurrentLM with one-hot input: the same model as a, trained as
      lyricist trains it (``model.loss``: head and cross-entropy fused, models/head.py);
  b   RecurrentLM with an embedding: the same model as c;
  b*  b with torch's own products only (lyricist.models.fast.matmul.private(False): no oneDNN
      and no packed weights, MKL's or oneDNN's), to show what the chosen backend is worth;
  b-  (lstm and gru) b with the gate math in torch ops instead of the compiled step
      (lyricist.models.fast.kernels.cpp_kernels(False)), to show what the C++ step is worth;
  c   torch.nn.Embedding -> torch.nn.RNN/GRU/LSTM -> torch.nn.Linear.

Variants are alternated (their order rotated) inside every repeat, so a slow patch of a
noisy machine hits all of them; tokens/sec is the median over repeats. Ratios compare
equal models: b/c (embedding) and b1/a (one-hot).

Memory, two honest measures (torch's CPU allocator keeps no statistics):
  saved  bytes autograd keeps from forward to backward (activations), counted once per
         storage with torch.autograd.graph.saved_tensors_hooks; parameters excluded;
  rss    peak resident memory of a fresh process running 3 training steps, minus its
         resident memory right before them (model, data and imports already loaded):
         what a step costs the machine, allocator caching and gradients included.
Generation: greedy decoding of 1,000 characters from batch 1, state carried, eval mode.

Arithmetic: each variant's matrix products per training step are counted (2 FLOPs per
multiply-add, forward and backward; the one-hot product in a is real work for it, a row
gather in b1) and printed as GFLOP/s, beside the head's forward product timed alone, the
best-shaped product of a step. A ratio bounded by arithmetic shows up there: b1/a = 3 needs b1's
products to run 3 x (b1's FLOPs / a's FLOPs) times as fast as a's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lyricist.models import RecurrentLM
from lyricist.models.fast import choice, kernels, matmul
from lyricist.settings import ModelSettings

ROOT = Path(__file__).resolve().parents[1]
VOCAB_JSON = ROOT / "data" / "encoded" / "jaychou" / "vocab.json"
FALLBACK_VOCAB_SIZE = 2583  # the full Jay Chou vocabulary, when the encoded data is not there
VARIANTS = {
    "a": "naive seed loop, one-hot",
    "b1": "lyricist, one-hot",
    "b": "lyricist, embedding",
    "b*": "lyricist, embedding, torch products",
    "b-": "lyricist, embedding, no C++ step",
    "c": "torch.nn, embedding",
}
NUM_GATES = {"rnn": 1, "gru": 3, "lstm": 4}
TORCH_MODULES = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
COMPILED = ("gru", "lstm")  # the cells with a compiled step (models/fast/csrc), which b- turns off
# The sizes of issue 26: layers, hidden, vocabulary, batch, steps, embedding.
SIZES = {
    "jaychou": dict(num_layers=1, hidden_size=256, vocab_size=2493, batch_size=32, num_steps=35, embedding_size=256),
    "char512": dict(num_layers=2, hidden_size=512, vocab_size=65, batch_size=64, num_steps=64, embedding_size=128),
    "ptb": dict(num_layers=2, hidden_size=200, vocab_size=10000, batch_size=20, num_steps=20, embedding_size=200),
}
DEFAULTS = dict(num_layers=1, hidden_size=256, batch_size=32, num_steps=35, embedding_size=256)  # vocab: see --vocab-size


class NaiveLM(nn.Module):
    """The seeds' loop, stacked gates: explicit one-hot, two matmuls per layer and the head per step.
    The state is a list of (h, c) per layer (c unused by rnn and gru)."""

    def __init__(self, vocab_size: int, cell: str, hidden_size: int, num_layers: int = 1):
        super().__init__()
        gates = NUM_GATES[cell] * hidden_size
        self.cell, self.vocab_size, self.hidden_size = cell, vocab_size, hidden_size
        inputs = [vocab_size] + [hidden_size] * (num_layers - 1)  # layer 0 reads the one-hot, the rest h below
        self.w_xh = nn.ParameterList(nn.Parameter(torch.randn(n, gates) * 0.01) for n in inputs)
        self.w_hh = nn.ParameterList(nn.Parameter(torch.randn(hidden_size, gates) * 0.01) for _ in inputs)
        self.b_xh = nn.ParameterList(nn.Parameter(torch.zeros(gates)) for _ in inputs)
        self.b_hh = nn.ParameterList(nn.Parameter(torch.zeros(gates)) for _ in inputs)
        self.w_hq = nn.Parameter(torch.randn(hidden_size, vocab_size) * 0.01)
        self.b_q = nn.Parameter(torch.zeros(vocab_size))

    def step(self, layer: int, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        x_gates = x @ self.w_xh[layer] + self.b_xh[layer]  # (B, G*H)
        h_gates = h @ self.w_hh[layer] + self.b_hh[layer]  # (B, G*H)
        if self.cell == "rnn":
            return torch.tanh(x_gates + h_gates), c
        if self.cell == "lstm":
            i, f, g, o = (x_gates + h_gates).chunk(4, dim=1)  # 4 x (B, H)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c), c
        x_r, x_z, x_n = x_gates.chunk(3, dim=1)  # 3 x (B, H)
        h_r, h_z, h_n = h_gates.chunk(3, dim=1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return (1 - z) * n + z * h, c

    def forward(self, ids: Tensor, state=None):
        batch_size, num_steps = ids.shape
        if state is None:
            zeros = torch.zeros(batch_size, self.hidden_size)
            state = [(zeros, zeros) for _ in self.w_hh]
        outputs = []
        for t in range(num_steps):
            x = F.one_hot(ids[:, t], self.vocab_size).float()  # (B, V)
            for layer, (h, c) in enumerate(state):
                state[layer] = self.step(layer, x, h, c)
                x = state[layer][0]  # (B, H): the next layer's input
            outputs.append(x @ self.w_hq + self.b_q)  # (B, V)
        return torch.stack(outputs, dim=1), state  # (B, T, V)


class TorchLM(nn.Module):
    """torch.nn's own recurrent module between an embedding and a linear head."""

    def __init__(self, vocab_size: int, cell: str, hidden_size: int, embedding_size: int, num_layers: int = 1):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.rnn = TORCH_MODULES[cell](embedding_size, hidden_size, num_layers)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, ids: Tensor, state=None):
        outputs, state = self.rnn(self.embedding(ids.t()), state)  # (T, B, H)
        return self.head(outputs.transpose(0, 1)), state  # (B, T, V)


def build(variant: str, cell: str, args) -> nn.Module:
    torch.manual_seed(0)
    if variant == "a":
        return NaiveLM(args.vocab_size, cell, args.hidden_size, args.num_layers)
    if variant == "b1":
        return RecurrentLM(ModelSettings(cell=cell, hidden_size=args.hidden_size, num_layers=args.num_layers), args.vocab_size)
    if variant in ("b", "b*", "b-"):
        return RecurrentLM(ModelSettings(cell=cell, hidden_size=args.hidden_size, num_layers=args.num_layers,
                                         embedding_size=args.embedding_size), args.vocab_size)
    return TorchLM(args.vocab_size, cell, args.hidden_size, args.embedding_size, args.num_layers)


def product_flops(variant: str, cell: str, args) -> int:
    """FLOPs of one training step's matrix products (2 per multiply-add), forward and backward."""
    batch, hidden, vocab, embedding = args.batch_size, args.hidden_size, args.vocab_size, args.embedding_size
    # Layer 0's input projection depends on the variant; the others read h (B, H) in every variant.
    gates = NUM_GATES[cell] * hidden
    per_step = 3 * batch * hidden * gates * args.num_layers  # h W_hh^T: the product, its weight and its input gradients
    per_step += 3 * batch * hidden * gates * (args.num_layers - 1)  # a stacked layer's input projection, the same three
    per_step += 3 * batch * hidden * vocab  # the head, the same three
    if variant == "a":
        per_step += 2 * batch * vocab * gates  # one_hot(x) W_xh and W_xh's gradient (x needs none)
    elif variant != "b1":  # b1 gathers rows of W_ih instead of multiplying
        per_step += 3 * batch * embedding * gates  # the embedding's input projection
    return 2 * per_step * args.num_steps


def head_product_gflops(args, repeats: int = 20) -> float:
    """GFLOP/s of the head's forward product (B*T, H) x (H, V) alone, as lyricist runs it."""
    hidden, weight = torch.randn(args.batch_size * args.num_steps, args.hidden_size), torch.randn(args.vocab_size, args.hidden_size)
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        matmul.linear_nograd(hidden, weight)
        times.append(time.perf_counter() - start)
    return 2 * hidden.shape[0] * args.hidden_size * args.vocab_size / statistics.median(times[2:]) / 1e9


class Trainer:
    """One variant's model, optimizer and training step; ``b*`` switches the private products
    off around it, ``b-`` the compiled step. Each step's forward + loss, backward and clip + SGD
    are timed apart (``phases``, seconds of ``clock``) for the split the table prints."""

    def __init__(self, variant: str, cell: str, args, clock=time.perf_counter):
        self.variant, self.model, self.clock = variant, build(variant, cell, args), clock
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.5)
        self.phases: list[tuple[float, float, float]] = []

    def backends(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(matmul.private(self.variant != "b*"))
        stack.enter_context(kernels.cpp_kernels(self.variant != "b-"))
        return stack

    def step(self, ids: Tensor, targets: Tensor) -> None:
        with self.backends():
            start = self.clock()
            loss = self.loss(ids, targets)
            forward = self.clock()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            backward = self.clock()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)  # as LitLanguageModel
            self.optimizer.step()
            self.phases.append((forward - start, backward - forward, self.clock() - backward))

    def loss(self, ids: Tensor, targets: Tensor) -> Tensor:
        if isinstance(self.model, RecurrentLM):
            return self.model.loss(ids, targets)[0]  # as lyricist trains: head and loss fused
        logits, _ = self.model(ids)  # (B, T, V)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))  # (B*T, V)

    @torch.no_grad()
    def generate(self, num_chars: int) -> float:
        """Greedy decoding from one character; returns characters per second."""
        self.model.eval()
        with self.backends():
            ids, state = torch.zeros(1, 1, dtype=torch.long), None
            start = time.perf_counter()
            for _ in range(num_chars):
                logits, state = self.model(ids, state)  # (1, 1, V)
                ids = logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
            elapsed = time.perf_counter() - start
        self.model.train()
        return num_chars / elapsed

    def saved_bytes(self, ids: Tensor) -> int:
        """Bytes autograd saves for backward in one forward + loss, each storage once, no parameters."""
        params = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        seen: dict[int, int] = {}

        def pack(t: Tensor):
            try:
                storage = t.untyped_storage()
            except (RuntimeError, NotImplementedError):  # e.g. oneDNN's packed weights: no plain storage
                return t
            if storage.data_ptr() not in params:
                seen[storage.data_ptr()] = storage.nbytes()
            return t

        with self.backends(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            self.loss(ids, ids)
        return sum(seen.values())


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def make_batches(args, count: int = 4) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch_size, args.num_steps)
    return [(torch.randint(args.vocab_size, shape, generator=generator),
             torch.randint(args.vocab_size, shape, generator=generator)) for _ in range(count)]


def rss_child(args) -> None:
    """Run in a fresh process: print the peak RSS growth (bytes) over 3 training steps."""
    trainer = Trainer(args.rss_child[1], args.rss_child[0], args)
    batches = make_batches(args)
    before = _status_bytes("VmRSS")
    for ids, targets in batches[:3]:
        trainer.step(ids, targets)
    # VmHWM, not getrusage's ru_maxrss: a child started by fork+exec inherits the parent's
    # ru_maxrss, so that would report the benchmark process's own peak.
    print(json.dumps({"rss": _status_bytes("VmHWM") - before}))


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (kB there) in bytes."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(field + ":")).split()[1]) * 1024


def measure_rss(cell: str, variant: str, args) -> int | None:
    command = [sys.executable, __file__, "--rss-child", cell, variant,
               "--vocab-size", str(args.vocab_size), "--hidden-size", str(args.hidden_size),
               "--num-layers", str(args.num_layers),
               "--embedding-size", str(args.embedding_size), "--batch-size", str(args.batch_size),
               "--num-steps", str(args.num_steps)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        print(f"  (rss of {cell}/{variant} failed: {result.stderr.strip()[-200:]})")
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["rss"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", nargs="+", default=["rnn", "gru", "lstm"], choices=list(NUM_GATES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds; the median is reported")
    parser.add_argument("--steps", type=int, default=4, help="training steps per variant per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps per variant first")
    parser.add_argument("--size", choices=list(SIZES), help="one of issue 26's sizes (the flags below override it)")
    parser.add_argument("--batch-size", type=int, help=f"default {DEFAULTS['batch_size']}")
    parser.add_argument("--num-steps", type=int, help=f"default {DEFAULTS['num_steps']}")
    parser.add_argument("--num-layers", type=int, help=f"stacked layers, in every variant; default {DEFAULTS['num_layers']}")
    parser.add_argument("--hidden-size", type=int, help=f"default {DEFAULTS['hidden_size']}")
    parser.add_argument("--embedding-size", type=int, help=f"for b, b*, b- and c; default {DEFAULTS['embedding_size']}")
    parser.add_argument("--vocab-size", type=int, default=None, help=f"default: {VOCAB_JSON.relative_to(ROOT)}, else {FALLBACK_VOCAB_SIZE}")
    parser.add_argument("--gen-chars", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="torch's intra-op threads (default: torch's own)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this process's CPU seconds (time.process_time), for a loaded machine")
    parser.add_argument("--no-rss", action="store_true", help="skip the per-variant peak-RSS subprocesses")
    parser.add_argument("--rss-child", nargs=2, metavar=("CELL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, value in {**DEFAULTS, **SIZES.get(args.size, {})}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("num_layers", "hidden_size", "embedding_size", "batch_size", "num_steps", "repeats", "steps",
                 "gen_chars"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.vocab_size is not None and args.vocab_size < 2:
        parser.error(f"--vocab-size must be >= 2, got {args.vocab_size}")

    vocab_source = f"--size {args.size}" if args.size and "--vocab-size" not in sys.argv else "--vocab-size"
    if args.vocab_size is None:
        if VOCAB_JSON.is_file():
            args.vocab_size, vocab_source = len(json.loads(VOCAB_JSON.read_text())["itos"]), str(VOCAB_JSON.relative_to(ROOT))
        else:
            args.vocab_size, vocab_source = FALLBACK_VOCAB_SIZE, "synthetic (no encoded data)"
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args)
        return
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}, load average {os.getloadavg()[0]:.2f}")
    chosen = matmul.backend()
    print(f"products (measured once on this machine, {choice.cache_file()}): dense {chosen.dense}, "
          f"loop {chosen.loop}; compiled step: {'yes' if kernels.step_kernels() is not None else 'no'}")
    print(f"vocab {args.vocab_size} ({vocab_source}), batch {args.batch_size}, steps {args.num_steps}, "
          f"{args.num_layers} layer(s) x hidden {args.hidden_size}, embedding {args.embedding_size} (b, b*, b-, c); "
          f"{args.repeats} rounds x {args.steps} training steps per variant, median; {args.clock} clock")
    batches = make_batches(args)
    trainers = {(cell, v): Trainer(v, cell, args, clock) for cell in args.cells for v in args.variants
                if v != "b-" or cell in COMPILED}
    for trainer in trainers.values():
        for ids, targets in batches[: args.warmup]:
            trainer.step(ids, targets)
        trainer.phases.clear()  # the split counts the timed steps only

    tokens_per_sec: dict[tuple[str, str], list[float]] = {key: [] for key in trainers}
    keys = list(trainers)
    for round_ in range(args.repeats):
        shift = round_ % len(keys)
        for key in keys[shift:] + keys[:shift]:  # a different variant goes first every round
            start = clock()
            for s in range(args.steps):
                trainers[key].step(*batches[s % len(batches)])
            tokens_per_sec[key].append(args.steps * args.batch_size * args.num_steps / (clock() - start))

    gen_speed: dict[tuple[str, str], list[float]] = {key: [] for key in trainers}
    for round_ in range(3):
        for key in keys[round_:] + keys[:round_]:
            gen_speed[key].append(trainers[key].generate(args.gen_chars))

    head_gflops = head_product_gflops(args)
    print(f"\n{'cell':5} {'variant':37} {'tokens/s':>9} {'(min-max)':>15} {'GFLOP/s':>8} {'saved MiB':>9} {'rss MiB':>8} "
          f"{'gen chars/s':>11}  fwd / bwd / opt ms")
    median = {key: statistics.median(v) for key, v in tokens_per_sec.items()}
    for cell in args.cells:
        for v in args.variants:
            key = (cell, v)
            if key not in trainers:
                continue
            saved = trainers[key].saved_bytes(batches[0][0]) / 2**20
            rss = None if args.no_rss else measure_rss(cell, v, args)
            rss_text = "-" if rss is None else f"{rss / 2**20:.0f}"
            lo, hi = min(tokens_per_sec[key]), max(tokens_per_sec[key])
            gflops = median[key] * product_flops(v, cell, args) / (args.batch_size * args.num_steps) / 1e9
            print(f"{cell:5} {v + '  ' + VARIANTS[v]:37} {median[key]:9.0f} {f'({lo:.0f}-{hi:.0f})':>15} {gflops:8.1f} "
                  f"{saved:9.1f} {rss_text:>8} {statistics.median(gen_speed[key]):11.0f}  "
                  + " / ".join(f"{1e3 * statistics.median(p):.1f}" for p in zip(*trainers[key].phases)))
    print()
    targets = {"rnn": 0.9, "gru": 1.0, "lstm": 1.0}
    for cell in args.cells:
        parts = []
        for num, den, target in [("b", "c", targets[cell]), ("b1", "a", 3.0), ("b", "a", None), ("b*", "c", None),
                                   ("b-", "c", None)]:
            if (cell, num) in median and (cell, den) in median:
                ratio = median[(cell, num)] / median[(cell, den)]
                rounds = [n / d for n, d in zip(tokens_per_sec[(cell, num)], tokens_per_sec[(cell, den)])]
                parts.append(f"{num}/{den} = {ratio:.2f}" + ("" if target is None else f" (target >= {target})")
                             + (f" [rounds {min(rounds):.2f}-{max(rounds):.2f}]" if num == "b" and den == "c" else ""))
        print(f"{cell:5} " + ", ".join(parts))
    print(f"\nthe head's forward product alone: {head_gflops:.1f} GFLOP/s")
    for cell in args.cells:
        if (cell, "a") in median and (cell, "b1") in median:
            flops_a, flops_b1 = product_flops("a", cell, args), product_flops("b1", cell, args)
            gflops_a = median[(cell, "a")] * flops_a / (args.batch_size * args.num_steps) / 1e9
            print(f"{cell:5} a's products are {flops_a / flops_b1:.2f} x b1's; at a's {gflops_a:.1f} GFLOP/s, "
                  f"b1/a = 3 needs b1's at {3 * gflops_a * flops_b1 / flops_a:.1f} GFLOP/s")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
