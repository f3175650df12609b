"""Peak memory and time of one training step (forward + backward) with and without flowzoo's kernels.

Steps, all on the same DiT trunk (flowzoo.backbones.dit) and the same width:
- ``mdlm``: ids (with a mask token) in, cross-entropy against the clean ids out.
- ``fm``: flow matching on the linear path: x_t = (1-t) x0 + t onehot(x1) in, CE against x1 out.
- ``psd``: a progressive self-distillation step of the mean denoiser delta_{s,t} (seed 001, L_PSD):
  two stop-gradient teacher passes (s->u on x_s, u->t on the landing point X_{s,u}) build the soft
  target gamma delta_{s,u} + (1-gamma) delta_{u,t}; the student delta_{s,t}(x_s) is trained by CE on it.
- ``lsd``: a Lagrangian self-distillation step: || (1-t) d/dt X_{s,t}(x_s) + X - sg D_t(X) ||^2, X the landing
  point, d/dt from forward-mode AD (torch.func.jvp), D_t(X) from a stop-gradient pass at (t, t).
``--source objectives`` (the default) measures the real training step: a FlowLM with that objective
(mdlm: masked path; fm: flow_matching; psd, lsd: flow maps on the linear path, which put half the batch on
the diagonal CE and half on the map loss; ar: causal DiT) runs ``model.objective(model, x1)`` and backward,
with the objective's switch ``fused`` false ("kernels: no") or true ("kernels: yes").
``--source emulated`` measures minimal in-script emulations of the objectives instead (embedding of a noisy
state + trunk + head, the whole batch on the map loss), independent of flowzoo.objectives. "kernels" routes
the (B, L, V) work through flowzoo.kernels: noisy_embedding, softmax_embedding, linear_cross_entropy
(TeacherTarget for psd) and lsd_residual_loss (the jvp is then taken of the trunk's hidden state).

Memory: on CUDA, torch.cuda.max_memory_allocated() during the step minus the memory held before it.
On the CPU, a TorchDispatchMode counts the bytes of every tensor storage created during the step
and releases them when the storage is freed (a weakref on the storage): the peak of live bytes
allocated by the step (activations, saved tensors, temporaries, gradients), the parameters and the
batch excluded. It sees tensors only, not allocator overhead. The saved-tensor column is the bytes
packed by torch.autograd.graph.saved_tensors_hooks (what the graph keeps for backward).

    python benchmarks/kernel_memory.py                   # reduced CPU size, writes benchmarks/results/kernel_memory_objectives.md
    python benchmarks/kernel_memory.py --source emulated # the emulated steps, writes benchmarks/results/kernel_memory.md
    python benchmarks/kernel_memory.py --device cuda --batch 8 --length 1024 --width 768 --depth 12
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import statistics
import contextlib
import time
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from flowzoo.backbones.base import plain_attention
from flowzoo.backbones.dit import DiT, modulate
from flowzoo.kernels import (
    TeacherTarget,
    draw_seed,
    interpolant,
    linear_cross_entropy,
    lsd_residual_loss,
    noisy_embedding,
    softmax_embedding,
)

# ---------------------------------------------------------------------------------------------- memory


def _data_ptr(t: torch.Tensor) -> int | None:
    """Storage address, or None for tensors without a plain storage (functorch wrappers, meta)."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


class LiveBytes(TorchDispatchMode):
    """Peak bytes of tensor storages created while active and still alive (CPU or CUDA)."""

    def __init__(self) -> None:
        super().__init__()
        self.current = self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_data_ptr(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and _data_ptr(t) is not None:
                self._track(t.untyped_storage(), inputs)
        return out

    def _track(self, storage, inputs: set[int]) -> None:
        key = id(storage)
        if key in self._seen or storage.data_ptr() in inputs or storage.nbytes() == 0:
            return  # a view, an in-place result or an already counted storage
        self._seen.add(key)
        size = storage.nbytes()
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self.current -= size
        self._seen.discard(key)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakRSS:
    """Peak resident memory of the process during a block, above its resident memory at the start.

    Linux only: writing 5 to /proc/self/clear_refs resets VmHWM (the peak RSS) to the current RSS.
    The script re-executes itself with MALLOC_MMAP_THRESHOLD_ set, so large tensors are mmapped and
    returned to the system when freed, and RSS follows the live tensors.
    """

    def __enter__(self):
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.base = _rss_kib("VmRSS")
        return self

    def __exit__(self, *exc):
        self.peak = (_rss_kib("VmHWM") - self.base) * 1024
        return False


class SavedBytes:
    """Sum of the bytes of distinct storages saved for backward (saved_tensors_hooks), parameters excluded."""

    def __init__(self, exclude: set[int]) -> None:
        self.storages: dict[int, int] = {}
        self.exclude = exclude

    def pack(self, t: torch.Tensor):
        ptr = _data_ptr(t)
        if ptr in self.exclude:
            return t
        if ptr is None:  # a functorch wrapper (jvp dual): count its logical size
            self.storages[id(t)] = t.numel() * t.element_size()
        else:
            self.storages[ptr] = t.untyped_storage().nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.storages.values())


# ---------------------------------------------------------------------------------------------- model


class Net(torch.nn.Module):
    """DiT trunk with its own input (V_in -> D) and output (D -> V) projections exposed for the kernels."""

    def __init__(self, vocab: int, in_vocab: int, width: int, depth: int, heads: int) -> None:
        super().__init__()
        self.dit = DiT(width=width, depth=depth, heads=heads, cond_dim=128).bind(in_vocab, vocab)
        torch.nn.init.normal_(self.dit.unembed.weight, std=0.02)  # zero-init would make every softmax uniform
        for block in self.dit.blocks:  # adaLN-zero would make the blocks the identity at init
            torch.nn.init.normal_(block.ada.weight, std=0.02)

    @property
    def w_in(self) -> torch.Tensor:
        return self.dit.embed.weight  # (D, V_in)

    @property
    def w_out(self) -> torch.Tensor:
        return self.dit.unembed.weight  # (V, D)

    @property
    def b_out(self) -> torch.Tensor:
        return self.dit.unembed.bias

    def hidden(self, e: torch.Tensor, t, s) -> torch.Tensor:
        """Trunk on an embedded input e (B, L, D) -> final modulated hidden state (B, L, D)."""
        dit = self.dit
        c = F.silu(dit.condition(e.shape[0], t, s, e.device))
        h = e
        for block in dit.blocks:
            h = block(h, c, None, 0)
        shift, scale = dit.final_ada(c).chunk(2, dim=-1)
        return modulate(dit.final_norm(h), shift, scale)

    def logits(self, e, t, s) -> torch.Tensor:
        return F.linear(self.hidden(e, t, s), self.w_out, self.b_out)  # (B, L, V)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w_in)  # (B, L, V) -> (B, L, D)


def _times(B, device, gen):
    s = torch.rand(B, generator=gen, device=device) * 0.6
    u = s + (0.95 - s) * torch.rand(B, generator=gen, device=device) * 0.5
    t = u + (0.95 - u) * torch.rand(B, generator=gen, device=device)
    return s, u, t


def _col(x):
    return x[:, None, None]


# ---------------------------------------------------------------------------------------------- steps


def step_mdlm(net: Net, x1, gen, kernels: bool) -> torch.Tensor:
    B, L = x1.shape
    V = net.w_out.shape[0]
    t = torch.rand(B, generator=gen, device=x1.device)
    masked = torch.rand(B, L, generator=gen, device=x1.device) < t[:, None]
    ids = torch.where(masked, torch.full_like(x1, V), x1)  # mask token = V
    e = F.embedding(ids, net.w_in.t())
    h = net.hidden(e, t, t)
    if kernels:
        ce = linear_cross_entropy(h, net.w_out, net.b_out, x1)
    else:
        ce = F.cross_entropy(F.linear(h, net.w_out, net.b_out).flatten(0, 1), x1.flatten(), reduction="none").view(B, L)
    return (ce * masked).sum() / masked.sum().clamp_min(1) / t.clamp_min(1e-3).mean()


def step_fm(net: Net, x1, gen, kernels: bool) -> torch.Tensor:
    B = x1.shape[0]
    V = net.w_out.shape[0]
    t = torch.rand(B, generator=gen, device=x1.device)
    if kernels:
        e = noisy_embedding(x1, net.w_in, 1 - t, t, seed=draw_seed(gen))
        return linear_cross_entropy(net.hidden(e, t, t), net.w_out, net.b_out, x1).mean()
    x_t = interpolant(x1, 1 - t, t, V, generator=gen)  # (B, L, V)
    logits = net.logits(net.embed(x_t), t, t)
    return F.cross_entropy(logits.flatten(0, 1), x1.flatten())


def step_psd(net: Net, x1, gen, kernels: bool) -> torch.Tensor:
    B = x1.shape[0]
    V = net.w_out.shape[0]
    s, u, t = _times(B, x1.device, gen)
    alpha, beta = (1 - u) / (1 - s), (u - s) / (1 - s)  # X_{s,u}(x) = alpha x + beta delta_{s,u}(x)
    gamma = ((1 - t) * (u - s)) / ((1 - u) * (t - s))
    seed = draw_seed(gen)
    if kernels:
        e_s = noisy_embedding(x1, net.w_in, 1 - s, s, seed=seed)  # embedding of x_s, x_s never built
        with torch.no_grad():
            h_su = net.hidden(e_s, u, s)
            landing = noisy_embedding(x1, net.w_in, alpha * (1 - s), alpha * s, seed=seed)
            landing = landing + beta[:, None, None] * softmax_embedding(h_su, net.w_out, net.b_out, net.w_in)
            h_ut = net.hidden(landing, t, u)
        target = TeacherTarget(torch.stack([h_su, h_ut]), torch.stack([gamma, 1 - gamma])[:, :, None])
        return linear_cross_entropy(net.hidden(e_s, t, s), net.w_out, net.b_out, target).mean()
    x_s = interpolant(x1, 1 - s, s, V, generator=gen)  # (B, L, V)
    with torch.no_grad():
        d_su = torch.softmax(net.logits(net.embed(x_s), u, s), -1)
        X_su = _col(alpha) * x_s + _col(beta) * d_su
        d_ut = torch.softmax(net.logits(net.embed(X_su), t, u), -1)
        target = _col(gamma) * d_su + _col(1 - gamma) * d_ut
        del d_su, X_su, d_ut
    logits = net.logits(net.embed(x_s), t, s)
    return -(target * torch.log_softmax(logits, -1)).sum(-1).mean()


def step_lsd(net: Net, x1, gen, kernels: bool) -> torch.Tensor:
    """Residual (1-t) d/dt X_{s,t}(x_s) + X - sg D_t(X) = delta + kappa d/dt delta - sg D_t(X) (objectives/lsd)."""
    B = x1.shape[0]
    V = net.w_out.shape[0]
    s, _, t = _times(B, x1.device, gen)
    a, c = (1 - t) / (1 - s), (t - s) / (1 - s)  # X_{s,t}(x) = a x + c delta_{s,t}(x)
    kappa = (1 - t) * c
    ones = torch.ones_like(t)
    if kernels:
        seed = draw_seed(gen)
        e_s = noisy_embedding(x1, net.w_in, 1 - s, s, seed=seed)
        with plain_attention():  # forward-mode AD through attention: hidden state and its t-derivative
            h, h_dot = torch.func.jvp(lambda tt: net.hidden(e_s, tt, s), (t,), (ones,))
        with torch.no_grad():  # teacher at the landing point, embedded without building X
            landing = noisy_embedding(x1, net.w_in, a * (1 - s), a * s, seed=seed)
            landing = landing + c[:, None, None] * softmax_embedding(h, net.w_out, net.b_out, net.w_in)
            h_teacher = net.hidden(landing, t, t)
        return lsd_residual_loss(h, h_dot, h_teacher, net.w_out, net.b_out, kappa).mean()
    x_s = interpolant(x1, 1 - s, s, V, generator=gen)  # (B, L, V)
    e_s = net.embed(x_s)
    with plain_attention():
        logits, dlogits = torch.func.jvp(lambda tt: net.logits(e_s, tt, s), (t,), (ones,))
    delta = torch.softmax(logits, -1)
    ddelta = delta * (dlogits - (delta * dlogits).sum(-1, keepdim=True))  # d/dt softmax(z(t))
    with torch.no_grad():
        X = _col(a) * x_s + _col(c) * delta
        D = torch.softmax(net.logits(net.embed(X), t, t), -1)
        del X
    return ((delta + _col(kappa) * ddelta - D) ** 2).sum(-1).mean()


STEPS = {"mdlm": step_mdlm, "fm": step_fm, "psd": step_psd, "lsd": step_lsd}

# the real objectives: step name -> (objective, path, sampler, causal backbone)
OBJECTIVES = {
    "mdlm": ("mdlm", "masked", "ancestral", False),
    "fm": ("flow_matching", "linear", "euler", False),
    "psd": ("psd", "linear", "flow_map", False),
    "lsd": ("lsd", "linear", "flow_map", False),
    # lsd with tangent_grad=false: the d/dt term as a constant, jvp without autograd (MeanFlow-style semi-gradient)
    "lsd_sg": ({"name": "lsd", "init_args": {"tangent_grad": False}}, "linear", "flow_map", False),
    # lsd with checkpoint_jvp=false: one torch.func.jvp through the trunk under autograd (keeps every block's
    # primal and tangent activations) instead of the default block-by-block jvp recomputed in the backward pass
    "lsd_1jvp": ({"name": "lsd", "init_args": {"checkpoint_jvp": False}}, "linear", "flow_map", False),
    "ar": ("ar", "autoregressive", "ar", True),
}


def flowlm(name: str, args, device) -> torch.nn.Module:
    """A FlowLM with the objective of step ``name`` on the benchmark's DiT (weights randomised like Net's)."""
    from flowzoo.module import FlowLM

    objective, path, sampler, causal = OBJECTIVES[name]
    backbone = {"name": "dit", "init_args": {"width": args.width, "depth": args.depth, "heads": args.heads,
                                             "cond_dim": 128, "causal": causal}}
    model = FlowLM(backbone=backbone, path=path, head="categorical", objective=objective, sampler=sampler,
                   vocab_size=args.vocab).to(device)
    torch.nn.init.normal_(model.backbone.unembed.weight, std=0.02)
    for block in model.backbone.blocks:
        torch.nn.init.normal_(block.ada.weight, std=0.02)
    return model


def step_objective(model, x1, gen, kernels: bool) -> torch.Tensor:
    """The real training loss: FlowLM.objective with the switch ``fused`` = kernels."""
    model.objective.fused = kernels
    return model.objective(model, x1)["loss"]


# ---------------------------------------------------------------------------------------------- driver


def measure(name: str, kernels: bool, args, device) -> dict:
    gen = torch.Generator(device=device).manual_seed(0)
    torch.manual_seed(0)
    V = args.vocab
    if args.source == "objectives":
        net, step = flowlm(name, args, device), step_objective
    else:
        net, step = Net(V, V + 1 if name == "mdlm" else V, args.width, args.depth, args.heads).to(device), STEPS[name]
    x1 = torch.randint(0, V, (args.batch, args.length), generator=gen, device=device)
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    saved = [0]

    def one_step():
        tracker = SavedBytes({p.untyped_storage().data_ptr() for p in net.parameters()})
        with torch.autograd.graph.saved_tensors_hooks(tracker.pack, lambda t: t):  # what the forward keeps
            loss = step(net, x1, gen, kernels)
        loss.backward()
        saved[0] = max(saved[0], tracker.total)

    measured = peak_and_time(one_step, device, args.repeat, before=lambda: net.zero_grad(set_to_none=True))
    return {"step": name, "kernels": kernels, "saved": saved[0], "params": params, **measured}


def peak_and_time(call, device, repeat: int, before=None) -> dict:
    """Peak memory ("peak", "rss") and median wall time ("time") of ``call()``, run 1 + ``repeat`` times;
    ``before()`` runs ahead of each call, outside what is measured (e.g. freeing the last step's gradients).

    Call 0 is a warm-up, under the tensor tracker on the CPU (it slows the call: not timed); call 1 is watched
    for the peak RSS on the CPU; on CUDA every call's max_memory_allocated above the memory held before it.
    """
    times, peak, peak_rss = [], 0, float("nan")
    for i in range(1 + repeat):
        if before is not None:
            before()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        live = LiveBytes() if device.type == "cpu" and i == 0 else None
        with PeakRSS() if device.type == "cpu" and i == 1 else contextlib.nullcontext() as rss:
            start = time.perf_counter()
            with live if live is not None else contextlib.nullcontext():
                call()
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
        if device.type == "cuda":
            peak = max(peak, torch.cuda.max_memory_allocated() - base)
        if live is not None:
            peak = live.peak
        if rss is not None:
            peak_rss = rss.peak
        if i >= 1:
            times.append(elapsed)
    return {"peak": peak, "rss": peak_rss, "time": statistics.median(times)}


def add_size_arguments(p: argparse.ArgumentParser, batch: int, length: int, repeat: int) -> None:
    """The options shared by the memory benchmarks: device, model and batch size, repeats, threads."""
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--length", type=int, default=length)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--repeat", type=int, default=repeat)
    p.add_argument("--threads", type=int, default=1)


def prepare_device(args, argv) -> torch.device:
    """On the CPU from the command line, re-execute once with glibc told to mmap large blocks (freed tensors then
    leave RSS, so peak RSS follows the live tensors); set the torch threads; return the device."""
    if args.device == "cpu" and "MALLOC_MMAP_THRESHOLD_" not in os.environ and argv is None:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"  # glibc: big blocks mmapped, freed blocks unmapped
        os.execv(sys.executable, [sys.executable, *sys.argv])
    torch.set_num_threads(args.threads)
    return torch.device(args.device)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_size_arguments(p, batch=4, length=64, repeat=2)
    p.add_argument("--source", choices=("objectives", "emulated"), default="objectives",
                   help="the real FlowLM objectives (fused off / on) or the in-script emulations")
    p.add_argument("--steps", default=None, help="comma-separated; default mdlm,fm,psd,lsd (+ lsd_1jvp, lsd_sg, ar for objectives)")
    p.add_argument("--out", default=None, help="default benchmarks/results/kernel_memory[_objectives].md")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = "mdlm,fm,psd,lsd,lsd_1jvp,lsd_sg,ar" if args.source == "objectives" else "mdlm,fm,psd,lsd"
    if args.out is None:
        suffix = "_objectives" if args.source == "objectives" else ""
        args.out = str(Path(__file__).parent / "results" / f"kernel_memory{suffix}.md")
    unknown = set(args.steps.split(",")) - set(OBJECTIVES if args.source == "objectives" else STEPS)
    if unknown:
        p.error(f"unknown steps {sorted(unknown)} for --source {args.source}")
    device = prepare_device(args, argv)
    rows = []
    for name in args.steps.split(","):
        for kernels in (False, True):
            row = measure(name, kernels, args, device)
            rows.append(row)
            print(f"{name:5s} kernels={str(kernels):5s} peak {row['peak'] / 2**20:9.1f} MiB  "
                  f"rss {row['rss'] / 2**20:9.1f} MiB  "
                  f"saved {row['saved'] / 2**20:9.1f} MiB  {row['time'] * 1e3:8.1f} ms", flush=True)
    write_table(rows, args, device)


def write_table(rows, args, device) -> None:
    ref = {r["kernels"]: r["peak"] for r in rows if r["step"] == "mdlm"}
    state = args.batch * args.length * args.vocab * 4
    how = ("torch.cuda.max_memory_allocated during the step minus memory before it" if device.type == "cuda"
           else "peak live bytes of tensor storages created during the step (TorchDispatchMode + storage weakrefs)")
    lines = [
        "# Kernel memory benchmark",
        "",
        f"Device: {device.type}"
        + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else f", {args.threads} thread(s)")
        + f"; V = {args.vocab}, batch {args.batch} x length {args.length}, DiT width {args.width}, depth "
        f"{args.depth}, heads {args.heads}; float32. One (B, L, V) float32 tensor = {state / 2**20:.1f} MiB; "
        f"parameters = {rows[0]['params'] / 2**20:.1f} MiB (not counted in the peak).",
        "",
        ("Steps: the real training step, `model.objective(model, x1)` + backward of a FlowLM with that objective "
         "(mdlm: masked path; fm: flow_matching; psd / lsd: half the batch on the diagonal CE, half on the map loss; "
         "ar: causal DiT); kernels = the objective's switch `fused` (false / true)." if args.source == "objectives"
         else "Steps: in-script emulations of the objectives (the whole batch on the map loss for psd / lsd); "
         "kernels = flowzoo.kernels in place of the dense (B, L, V) code."),
        "",
        f"Peak: {how}."
        + (" Peak RSS: the process's peak resident memory during the step above its resident memory before it "
           "(VmHWM reset through /proc/self/clear_refs; glibc MALLOC_MMAP_THRESHOLD_=131072)." if device.type == "cpu"
           else "")
        + " Saved: bytes kept for backward (saved_tensors_hooks), parameters excluded. Time: median wall time of forward + backward "
        f"over {args.repeat} step(s) after a warm-up step. Ratios use the peak column.",
        "",
        "| step | kernels | peak MiB | peak RSS MiB | saved MiB | step ms | peak / MDLM (same setting) | "
        "peak / MDLM with kernels |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['step']} | {'yes' if r['kernels'] else 'no'} | {r['peak'] / 2**20:.1f} | {r['rss'] / 2**20:.1f} | "
            f"{r['saved'] / 2**20:.1f} | {r['time'] * 1e3:.0f} | {r['peak'] / ref.get(r['kernels'], float('nan')):.2f} | "
            f"{r['peak'] / ref.get(True, float('nan')):.2f} |"
        )
    out = Path(args.out)
    shown = {**vars(args), "out": os.path.relpath(out.resolve(), Path(__file__).resolve().parent.parent)}
    lines += ["", "Command: `python benchmarks/kernel_memory.py " + " ".join(
        f"--{k} {v}" for k, v in shown.items()) + "`", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
