"""``condition_share`` of the flow-map objectives (lsd, psd, distill and the distill-based dmd / refine) and of
flow_matching: the known positions are held at their clean one-hot wherever the student or its target reads a
state, they receive no loss, the share is respected, and share 0 is the unconditional objective."""

import pytest
import torch

from flowzoo.module import FlowLM

V, L, B = 13, 8, 6
TINY = {"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}
# diagonal_share 1/3 of B = 6: the diagonal block has 2 rows, the map block 4, fresh one-step samples 3,
# so each network call's rows say which block (and which known positions) it reads
SPLIT = {"flow_map": {"diagonal_share": 1 / 3}}
NEEDS_TEACHER = ("distill", "dmd", "refine")
CASES = {
    "flow_matching": ("flow_matching", {"fused": False}),
    "lsd": ("lsd", {"fused": False, **SPLIT}),
    "lsd_stop_tangent_adaptive": ("lsd", {"fused": False, "tangent_grad": False, "adaptive": True, **SPLIT}),
    "psd": ("psd", {"fused": False, **SPLIT}),
    "psd_adaptive_random_midpoint": ("psd", {"fused": False, "adaptive": True, "midpoint": "random", **SPLIT}),
    "distill_semigroup": ("distill", {"teacher_gap": 0.3, **SPLIT}),
    "distill_lagrangian": ("distill", {"target": "lagrangian", **SPLIT}),
    "distill_trajectory": ("distill", {"target": "trajectory", "teacher_steps": 3, **SPLIT}),
    "dmd": ("dmd", {"num_generated": 3, **SPLIT}),
    "refine": ("refine", {"num_generated": 3, "refine_steps": 2, **SPLIT}),
}


def _perturbed(model, scale=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # off the zero initialisation: outputs depend on the input
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


def _model(case: str, share: float = 1.0) -> FlowLM:
    objective, args = CASES[case]
    torch.manual_seed(0)
    model = _perturbed(FlowLM(backbone=TINY, vocab_size=V, objective={"name": objective, "init_args": {**args, "condition_share": share}}))
    if objective in NEEDS_TEACHER:
        torch.manual_seed(1)
        model.objective.set_teacher(_perturbed(FlowLM(backbone=TINY, vocab_size=V), seed=1))
    return model.eval()  # dmd's critic is not trained in eval (its own optimiser step is not under test)


def _known() -> torch.Tensor:
    """A prefix on some rows, holes on others, nothing on one, across both blocks of the batch (B, L)."""
    known = torch.zeros(B, L, dtype=torch.bool)
    known[0, :3] = True  # diagonal block (rows 0-1)
    known[2, :5] = True  # map block (rows 2-5)
    known[3, [0, 1, 5, 6, 7]] = True
    known[5, 1:] = True
    return known


def _blocks(model, x: torch.Tensor) -> dict[int, torch.Tensor]:
    """Rows of ``x`` (B, ...) by the number of rows of the network call that reads them (flow_matching: the whole
    batch; a flow-map objective: the diagonal block, 2 rows, or the map block, 4)."""
    if model.objective.registry_name == "flow_matching":
        return {B: x}
    return {2: x[:2], 4: x[2:]}


def _forward(model, x1, known, edit=None):
    """The objective's loss from torch.manual_seed(5) with the given known positions; ``edit(logits, mask)`` changes
    the student's logits of every call on the batch's rows (not the fresh one-step samples of dmd / refine)."""
    model.objective.known_positions = lambda _x1: known
    blocks = _blocks(model, known)
    plain = type(model).logits.__get__(model)

    def logits(x, t, s=None):
        out = plain(x, t, s)
        mask = blocks.get(out.shape[0])
        return out if edit is None or mask is None else edit(out, mask)

    model.logits = logits
    try:
        torch.manual_seed(5)
        return model.objective(model, x1)
    finally:
        del model.logits
        del model.objective.known_positions


@pytest.mark.parametrize("case", sorted(CASES))
def test_known_positions_receive_no_loss_and_are_read_clean(case):
    """Whatever the student outputs at a known position changes no loss (so its gradient there is zero): the loss is
    on unknown positions only, and every state the student or its target reads from the student's outputs (the
    semigroup's X_{s,u}, the Lagrangian landing point) has its known positions put back at their clean one-hot."""
    model = _model(case)
    x1 = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(2))
    known = _known()
    base = _forward(model, x1, known)
    noise = torch.Generator().manual_seed(7)

    def at_known(out, mask):
        return out + torch.where(mask[..., None], 5 * torch.randn(out.shape, generator=noise), torch.zeros(()))

    def at_unknown(out, mask):
        return out + torch.where(mask[..., None], torch.zeros(()), 5 * torch.randn(out.shape, generator=noise))

    moved_known = _forward(model, x1, known, at_known)
    for key in base:
        torch.testing.assert_close(moved_known[key], base[key], rtol=1e-6, atol=1e-6, msg=f"{case}: {key}")
    moved_unknown = _forward(model, x1, known, at_unknown)
    assert not torch.allclose(moved_unknown["loss"], base["loss"])  # the test can fail: unknown outputs do count

    # and the gradient of the loss w.r.t. the student's outputs: zero at known positions, not at unknown ones
    leaves = []

    def record(out, mask):
        z = torch.zeros_like(out, requires_grad=True)
        leaves.append((z, mask))
        return out + z

    _forward(model, x1, known, record)["loss"].backward()
    graded = [(z.grad, mask) for z, mask in leaves if z.grad is not None]
    assert graded
    for grad, mask in graded:
        assert torch.count_nonzero(grad[mask]) == 0
    assert any(torch.count_nonzero(grad[~mask]) > 0 for grad, mask in graded)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_student_and_the_teacher_read_the_known_positions_clean(case):
    """Every network input of the batch's rows (the student's x_t, x_s, and its own or the teacher's reading of
    X_{s,u}, of the landing point, of the trajectory) has onehot(x1) at the known positions, and noise elsewhere."""
    model = _model(case)
    x1 = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(3))
    known = _known()
    masks, ids = _blocks(model, known), _blocks(model, x1)
    seen = []

    def watch(network):
        plain = type(network).logits.__get__(network)

        def logits(x, t, s=None):
            if x.shape[0] in masks:
                seen.append((network is model, x.detach(), masks[x.shape[0]], ids[x.shape[0]]))
            return plain(x, t, s)

        network.logits = logits

    teacher = getattr(model.objective, "teacher_model", None)
    for network in (model, teacher) if teacher is not None else (model,):
        watch(network)
    model.objective.known_positions = lambda _x1: known
    torch.manual_seed(5)
    model.objective(model, x1)
    assert any(student for student, *_ in seen)
    assert teacher is None or any(not student for student, *_ in seen)
    onehot = torch.nn.functional.one_hot
    for _, x, mask, rows in seen:
        clean = onehot(rows, V).to(x.dtype)
        assert torch.equal(x[mask], clean[mask])
        assert not torch.equal(x[~mask], clean[~mask])


@pytest.mark.parametrize("case", sorted(CASES))
def test_share_zero_is_the_unconditional_objective(case):
    """condition_share = 0 draws no mask (no random number: the objective is the unconditional one, bit for bit);
    the conditioned code with nothing known gives the same loss and gradients up to rounding."""
    x1 = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(4))
    plain = _model(case, share=0.0)
    assert plain.objective.train().known_positions(x1) is None
    plain.objective.eval()
    torch.manual_seed(5)
    out = plain.objective(plain, x1)
    out["loss"].backward()
    after = torch.get_rng_state()

    masked = _model(case, share=0.0)
    nothing = _forward(masked, x1, torch.zeros(B, L, dtype=torch.bool))
    nothing["loss"].backward()
    assert torch.equal(torch.get_rng_state(), after)  # the same draws in the same order
    for key in out:
        torch.testing.assert_close(nothing[key], out[key], rtol=1e-5, atol=1e-6, msg=f"{case}: {key}")
    for (name, p), q in zip(plain.named_parameters(), masked.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=f"{case}: {name}")


@pytest.mark.parametrize("objective", ["flow_matching", "lsd", "psd", "distill", "dmd", "refine"])
def test_share_is_respected_and_validated(objective):
    model = FlowLM(backbone=TINY, vocab_size=V, objective={"name": objective, "init_args": {"condition_share": 0.3}})
    known = model.objective.known_positions(torch.zeros(4000, L, dtype=torch.long))
    rows = known.any(1).float().mean().item()
    assert abs(rows - 0.3) < 0.03
    assert (~known).any(1).all()  # every row keeps something to learn
    prefix = known[known.any(1)]
    assert 0.3 < (prefix == (prefix.cumsum(1) == torch.arange(1, L + 1))).all(1).float().mean() < 0.75  # prefixes and holes
    assert model.objective.known_positions(torch.zeros(8, L, dtype=torch.long)).shape == (8, L)
    model.eval()  # validation: the unconditional objective, comparable across shares
    assert model.objective.known_positions(torch.zeros(8, L, dtype=torch.long)) is None
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"condition_share must lie in \[0, 1\]"):
            FlowLM(backbone=TINY, vocab_size=V, objective={"name": objective, "init_args": {"condition_share": bad}})


def test_condition_share_is_saved_with_the_objective(tmp_path):
    from flowzoo.checkpoints import load_checkpoint

    model = FlowLM(backbone=TINY, vocab_size=V, objective={"name": "lsd", "init_args": {"condition_share": 0.25}})
    model.save_pretrained(tmp_path / "m")
    assert load_checkpoint(str(tmp_path / "m")).objective.condition_share == 0.25
