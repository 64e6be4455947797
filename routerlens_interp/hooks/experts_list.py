"""``experts.hook_route`` for experts kept as an ``nn.ModuleList`` of per-expert MLPs (remote code).

MiniCPM-MoE-8x2B and DeepSeek-V2 loaded with ``trust_remote_code=True`` keep one MLP module per expert and
never call an experts module with ``(indices [T, k], weights [T, k])``: the family's code picks the top-k,
derives the weights from the top-k values (renormalisation, a scaling factor), sends each expert the rows of
its tokens and multiplies the expert's output by the weights itself. The hook layer reads and edits that
without re-implementing any of it:

- **indices**: the top-k over the ``E`` experts the routing scope computed, as the family's code got it back
  (after any masking or steering edit), seen by the routing tap (:class:`~.tap.RoutingTap`, ``observe``).
- **weights**: the tensor the family derived from those top-k values last before its first expert ran,
  followed call by call (a float ``[T, k]`` result of an operation on the values, or on what was derived from
  them: ``v / v.sum(-1)``, ``.to(dtype)``, ``· routed_scaling_factor``; or a ``gather`` of other scores at
  the chosen indices).
- **edits** (``w → w'``, e.g. zero masking, attribution's ``w · s``) act on the experts' outputs: the rows of
  token ``t`` that expert ``e`` returns are multiplied by ``w'[t, j] / w[t, j]`` (``idx[t, j] = e``), so the
  family's own combination ``Σ_j w[t, j] · out`` becomes ``Σ_j w'[t, j] · out``. Rows are matched to tokens
  by their values: each expert's input rows must be the routed tokens' hidden states, exactly; any other
  dispatch is refused with the reason rather than mis-attributed.

On each layer's first forward the block's output is checked against ``Σ_j w'[t, j] · expert(x_t)`` (+ shared
experts) recomputed from the experts' own modules (:meth:`ListRoute._verify`); a family whose weights are not
what this follows is refused from then on, with the reason. State lives in this module's closures for the
duration of one forward of the MoE block, nothing in module ``__dict__``\\s; every PyTorch hook is removed
with the point's last client.
"""
from __future__ import annotations

import torch

from .tap import _TOPK

_GATHER = (torch.gather, torch.Tensor.gather)


class ExpertsListUnavailable(NotImplementedError):
    """The routing of this family's ``nn.ModuleList`` experts cannot be read or edited exactly (the reason
    says why); nothing plausible-but-wrong is returned instead."""


class ListRoute:
    """The ``experts.hook_route`` point of one MoE layer whose experts are an ``nn.ModuleList``.

    Args:
        hl: the :class:`~.layer.HookLayer`.
        layer: decoder layer index.
        name: the point's name (``blocks.L.experts.hook_route``).
    """

    def __init__(self, hl, layer: int, name: str):
        self.hl, self.layer, self.name = hl, layer, name
        s = hl.spec
        self.E, self.k, self.H = s.n_experts, s.top_k, s.hidden_size
        self.state: dict | None = None  # one forward of the block: hidden, idx, w, factor

    # -- observing the routing scope ------------------------------------------------------------
    def observe(self, func, args, out) -> None:
        """Called by the routing tap with each call's result inside the routing scope."""
        st = self.state
        if st is None or st.get("frozen"):
            return
        if func in _TOPK and isinstance(out, tuple) and args and isinstance(args[0], torch.Tensor):
            x = args[0]
            if x.dim() and x.shape[-1] == self.E and out.indices.shape[-1] == self.k:
                st["idx"], st["w"] = out.indices, out.values
            return
        w, idx = st.get("w"), st.get("idx")
        if w is None or not (isinstance(out, torch.Tensor) and out.is_floating_point() and out.shape == w.shape):
            return
        # derived from the weights so far, or gathered at the chosen experts from other scores (DeepSeek-V3
        # style: the top-k ranks biased scores, the weights are the unbiased ones at those indices)
        if any(a is w for a in args) or (func in _GATHER and any(a is idx for a in args)):
            st["w"] = out

    # -- hooks ----------------------------------------------------------------------------------
    def install(self) -> list:
        s, hf = self.hl.spec, self.hl.lm.hf
        block = s.moe_block(hf, self.layer)
        experts = s.experts(hf, self.layer)
        handles = [block.register_forward_pre_hook(self._enter, with_kwargs=True),
                   block.register_forward_hook(self._leave, with_kwargs=True, always_call=True)]
        for e, mod in enumerate(experts):
            handles.append(mod.register_forward_pre_hook(self._expert_in(e)))
            handles.append(mod.register_forward_hook(self._expert_out(e)))
        return handles

    def _enter(self, module, args, kwargs):
        h = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        self.state = {"hidden": h.reshape(-1, h.shape[-1]), "rows": {}}

    def _leave(self, module, args, kwargs, output):
        st, self.state = self.state, None
        if st is not None and not st.get("frozen") and st.get("idx") is not None:
            self._freeze(st)  # no expert ran (no tokens): the readers still get the routing
        if st is not None and st.get("used") is not None and self.layer not in self.hl.list_checked \
                and isinstance(output, torch.Tensor):
            self._verify(st, output)

    @torch.no_grad()
    def _verify(self, st: dict, output: torch.Tensor) -> None:
        """Once per layer and model, on its first forward: the block's output must be ``Σ_j w[t, j] ·
        expert_{idx[t, j]}(x_t)`` (+ shared experts) with the weights followed from the top-k, recomputed here
        from the experts' own modules. Otherwise the weights read are not the family's: refused from then on."""
        s = self.hl.spec
        self.hl.list_checked.add(self.layer)
        x, (idx, w) = st["hidden"], st["used"]
        idx, w = idx.reshape(-1, self.k), w.reshape(-1, self.k)
        y = output.reshape(-1, output.shape[-1]).float()
        if idx.shape[0] != x.shape[0] or y.shape[0] != x.shape[0]:
            why = f"the routing covers {idx.shape[0]} tokens, the block {x.shape[0]}"
        else:
            experts, block = s.experts(self.hl.lm.hf, self.layer), s.moe_block(self.hl.lm.hf, self.layer)
            ref = torch.zeros_like(y)
            for e in range(self.E):
                sel = idx == e
                tok = sel.any(-1).nonzero().reshape(-1)
                if tok.numel():
                    we = (sel[tok].to(w.dtype) * w[tok]).sum(-1, keepdim=True).float()
                    ref[tok] += we * experts[e](x[tok]).float()
            if s.shared_experts_attr:
                ref += getattr(block, s.shared_experts_attr)(x).float()
            scale = 1.0 + float(y.abs().max())
            tol = (1e-4 if output.dtype == torch.float32 else 3e-2) * scale
            why = None if torch.allclose(ref, y, rtol=0, atol=tol) else (
                f"max difference {(ref - y).abs().max().item():.3g} of {scale - 1:.3g}")
        if why is not None:
            self.hl.list_refused[self.layer] = (
                f"the block's output is not Σ w · expert(x) with the weights followed from its top-k ({why}): the "
                "family combines its experts in another way, so its routing weights cannot be read")
            raise ExpertsListUnavailable(f"{self.name}: {s.family}: {self.hl.list_refused[self.layer]}")

    def _freeze(self, st: dict) -> None:
        """The routing is decided (the first expert is about to run): run the point's edits and reads."""
        st["frozen"] = True
        idx, w = st.get("idx"), st.get("w")
        if idx is None:
            raise ExpertsListUnavailable(f"{self.name}: the {self.hl.spec.family} block ran its experts without a top-k over "
                               f"its {self.E} experts inside {self.hl.spec.routing_scope_attr!r}; its routing cannot "
                               "be read")
        pt = self.hl._points.get(self.name)
        w2 = w
        for fn in (pt.edits if pt is not None else ()):
            w2 = fn(idx, w2)
        if w2 is not w:
            bad = (w == 0) & (w2 != 0)
            if bool(bad.any()):
                raise ExpertsListUnavailable(f"{self.name}: an edit gives weight to an expert whose routing weight is 0; with "
                                   "experts kept as a ModuleList an edit can only scale the family's weights")
            st["factor"] = torch.where(w != 0, w2 / torch.where(w != 0, w, torch.ones_like(w)), torch.ones_like(w))
        reads = pt.reads if pt is not None else ()
        if reads and self.layer in self.hl.list_refused:
            raise ExpertsListUnavailable(f"{self.name}: {self.hl.spec.family}: {self.hl.list_refused[self.layer]}")
        st["used"] = (idx, w2)
        for fn in reads:
            fn(idx, w2)

    def _expert_in(self, e: int):
        def pre(module, args):
            st = self.state
            if st is None:
                return None  # expert called outside its block (not routed): nothing to do
            if not st.get("frozen"):
                self._freeze(st)
            if st.get("factor") is not None:
                st["rows"][e] = args[0]
            return None
        return pre

    def _expert_out(self, e: int):
        def hook(module, args, output):
            st = self.state
            if st is None or st.get("factor") is None:
                return None
            x = st["rows"].pop(e)
            f = self._row_factors(st, e, x)
            return output * f.to(output.dtype).reshape(*f.shape, *([1] * (output.dim() - 1)))
        return hook

    def _row_factors(self, st: dict, e: int, x: torch.Tensor) -> torch.Tensor:
        """``[n]`` factor for each of the ``n`` rows expert ``e`` received, from their tokens' slots."""
        idx, factor, hidden = st["idx"].reshape(-1, self.k), st["factor"].reshape(-1, self.k), st["hidden"]
        sel = idx == e
        tokens = sel.any(-1).nonzero().reshape(-1)
        per_token = (factor * sel.to(factor.dtype)).sum(-1)
        x2 = x.reshape(-1, x.shape[-1])
        if x2.shape[0] != tokens.numel():
            raise ExpertsListUnavailable(f"{self.name}: expert {e} received {x2.shape[0]} rows but the routing sent it "
                               f"{tokens.numel()} tokens; this dispatch cannot be edited per token")
        if tokens.numel() == 0:
            return per_token[:0]
        ref = hidden[tokens]
        if torch.equal(x2, ref):
            return per_token[tokens]
        # a sorted dispatch (MiniCPM's moe_infer): match rows to tokens by value
        r = torch.randn(x2.shape[-1], dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(x2.device)
        ox, ot = (x2.double() @ r).argsort(), (ref.double() @ r).argsort()
        if not torch.equal(x2[ox], ref[ot]):
            raise ExpertsListUnavailable(f"{self.name}: the rows expert {e} received are not its tokens' hidden states; this "
                               "family transforms the experts' inputs, so its routing weights cannot be edited")
        order = torch.empty_like(ox)
        order[ox] = tokens[ot]  # row ox[i] holds token tokens[ot[i]]
        return per_token[order]

