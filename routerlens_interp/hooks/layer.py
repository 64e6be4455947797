"""The one hook layer: every read and every edit of a model's internals goes through here.

Named points (``L`` a decoder layer; shapes flatten batch × sequence into ``T`` for routing):

==================================  ==========================================================  =========
name                                value                                                        edits
==================================  ==========================================================  =========
``blocks.L.router.hook_logits``     router logits ``[T, E]``, as the family's routing sees them   yes
``blocks.L.router.hook_choice``     every top-k input over the expert axis ``[..., E]``           yes
``blocks.L.router.hook_select``     the top-k inputs again, to pick the indices only (steering)   yes
``blocks.L.experts.hook_route``     ``(indices [T, k], weights [T, k])`` reaching the experts     weights
``blocks.L.attn.hook_mask``         the attention mask the attention module receives (or builds)  yes
``blocks.L.attn.hook_pattern``      attention probabilities ``[B, H, T|R, T]`` (softmax layers)   no
``blocks.L.hook_resid_post``        residual stream after the layer ``[B, T, D]``                 no
==================================  ==========================================================  =========

At each point the edits run first, in the order they were added, then the reads: a read sees what the
model really used, whatever order a mask and a tracer were entered in. The router points act *inside* the
family's own forward (:class:`~.tap.RoutingTap`), so the family's routing rule runs on the edited logits
and no re-implementation of it is needed. Experts kept as an ``nn.ModuleList`` (remote code, ``spec.experts_kind
== "module_list"``) are never called with ``(indices, weights)``: there ``experts.hook_route`` follows the top-k
the tap sees to the weights the family derives from it, and its edits scale each expert's output rows
(:mod:`.experts_list`). A decoder layer holding several attention sublayers (LongCat-Flash: ``self_attn[0]``,
``self_attn[1]``) has one pattern point with their heads side by side, and its mask point edits each one's mask.
Attention modules that build their mask inside their forward (GLM-5-Next's top-k indexer) have
``attn.hook_mask`` on the mask they build (:mod:`.mask_builder`). Every PyTorch hook is installed when a point
gets its first client and removed with its last, also after an exception; nothing is kept in module
``__dict__``\\s (the shadowed mask builder only while its point has a client).
"""
from __future__ import annotations

import inspect
import re
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from ..arch import get_path
from .tap import RoutingTap

_NAME = re.compile(r"^blocks\.(\d+)\.(router\.hook_logits|router\.hook_choice|router\.hook_select|experts\.hook_route|attn\.hook_mask|"
                   r"attn\.hook_pattern|hook_resid_post)$")
EDITABLE = ("router.hook_logits", "router.hook_choice", "router.hook_select", "experts.hook_route", "attn.hook_mask")


class _Point:
    def __init__(self):
        self.edits: list[Callable] = []
        self.reads: list[Callable] = []
        self.handles: list = []

    def empty(self) -> bool:
        return not self.edits and not self.reads


class HookLayer:
    """Named read/edit points of one :class:`~routerlens_interp.model.MoEModel` (``lm.hooks``)."""

    def __init__(self, lm):
        self.lm = lm
        self._points: dict[str, _Point] = {}
        self._routers: dict[int, dict] = {}  # layer → installed tap state
        self.taps_seen: dict[int, int] = {}  # layer → router linears seen by the tap (self-check)
        self.reroute_checked = False
        self.lens_checked = False
        self.rows_checked = False  # attention rows without eager checked against eager (attn_rows.check_rows)
        self.rows_refused: str | None = None
        self.masks: dict[int, list] = {}  # layer → [(mode, bool [E])] of the masks now in force
        self._observers: dict[int, Callable] = {}  # layer → observer of the routing scope (ModuleList experts)
        self.list_checked: set[int] = set()  # ModuleList experts: layers whose read weights were checked
        self.list_refused: dict[int, str] = {}

    @property
    def spec(self):
        return self.lm.spec

    # -------------------------------------------------------------------------------- public
    def names(self) -> list[str]:
        """Every point this model has."""
        s, out = self.spec, []
        for l in range(s.n_layers):
            if l in s.attention_layers:
                out += [f"blocks.{l}.attn.hook_mask", f"blocks.{l}.attn.hook_pattern"]
            if l in s.moe_layers:
                out += [f"blocks.{l}.router.hook_logits", f"blocks.{l}.router.hook_choice",
                        f"blocks.{l}.router.hook_select", f"blocks.{l}.experts.hook_route"]
            out.append(f"blocks.{l}.hook_resid_post")
        return out

    @contextmanager
    def edit(self, name: str, fn: Callable) -> Iterator[None]:
        """Apply ``fn`` at point ``name`` while the block runs (see the table above for its arguments)."""
        layer, kind = self._parse(name)
        if kind not in EDITABLE:
            raise ValueError(f"{name} can be read, not edited; editable points: {EDITABLE}")
        with self._client(name, layer, kind, "edits", fn):
            yield

    @contextmanager
    def read(self, name: str, fn: Callable, rows: torch.Tensor | None = None) -> Iterator[None]:
        """Call ``fn(value)`` at point ``name`` (after every edit there) while the block runs.

        ``rows`` (``attn.hook_pattern`` only): ``[B]`` or ``[B, R]`` query positions; ``fn`` then gets the
        probabilities of those rows ``[B, H, R, T]``, and an SDPA model computes only them (no eager attention).
        """
        layer, kind = self._parse(name)
        if kind == "attn.hook_pattern":
            fn = _PatternReader(fn, rows)
        elif rows is not None:
            raise ValueError(f"rows= applies to attn.hook_pattern, not {name}")
        if kind in ("router.hook_choice", "router.hook_select"):
            raise ValueError(f"{name} is an edit point; read blocks.{layer}.router.hook_logits")
        with self._client(name, layer, kind, "reads", fn):
            yield

    # ------------------------------------------------------------------------------ internals
    def _parse(self, name: str) -> tuple[int, str]:
        m = _NAME.match(name)
        if not m:
            raise KeyError(f"unknown hook point {name!r}; points look like blocks.3.router.hook_logits "
                           f"(see lm.hooks.names())")
        layer, kind = int(m.group(1)), m.group(2)
        s = self.spec
        if not 0 <= layer < s.n_layers:
            raise ValueError(f"{name}: layer {layer} out of range; the model has decoder layers 0..{s.n_layers - 1}")
        if kind.startswith(("router", "experts")):
            s.check_moe_layer(layer)
        if kind.startswith("attn") and layer not in s.attention_layers:
            raise ValueError(f"{name}: layer {layer} has no softmax attention ({s.mixer_kind(layer)}); layers with "
                             f"attention probabilities: {s.attention_layers}")
        return layer, kind

    @contextmanager
    def _client(self, name, layer, kind, role, fn):
        pt = self._points.setdefault(name, _Point())
        if pt.empty():
            try:
                self._install(pt, layer, kind)
            except BaseException:
                for h in pt.handles:
                    h.remove()
                self._points.pop(name, None)
                raise
        getattr(pt, role).append(fn)
        try:
            yield
        finally:
            lst = getattr(pt, role)
            for i in range(len(lst) - 1, -1, -1):
                if lst[i] is fn:
                    del lst[i]
                    break
            if pt.empty():
                for h in pt.handles:
                    h.remove()
                pt.handles.clear()
                self._points.pop(name, None)

    def _run(self, name: str, value):
        pt = self._points.get(name)
        if pt is None:
            return value
        for fn in pt.edits:
            value = fn(value)
        for fn in pt.reads:
            fn(value)
        return value

    def _run_route(self, name: str, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Route edits ``fn(indices, weights) → weights``, then reads ``fn(indices, weights)``."""
        pt = self._points.get(name)
        if pt is None:
            return w
        for fn in pt.edits:
            w = fn(idx, w)
        for fn in pt.reads:
            fn(idx, w)
        return w

    def _install(self, pt: _Point, layer: int, kind: str) -> None:
        s, hf = self.spec, self.lm.hf
        if kind in ("router.hook_logits", "router.hook_choice", "router.hook_select"):
            pt.handles += self._install_tap(layer)
        elif kind == "experts.hook_route":
            pt.handles += self._install_route(layer)
        elif kind == "attn.hook_mask":  # a layer with several attention sublayers: each gets the edit
            pt.handles += [self._install_mask(m, f"blocks.{layer}.attn.hook_mask")
                           for m in s.attention_modules(hf, layer)]
        elif kind == "attn.hook_pattern":
            pt.handles += self._install_pattern(layer)
        else:  # hook_resid_post
            name = f"blocks.{layer}.hook_resid_post"

            def resid(module, args, output):
                self._run(name, output[0] if isinstance(output, tuple) else output)
            pt.handles.append(s.layers(hf)[layer].register_forward_hook(resid))

    def _install_pattern(self, layer: int) -> list:
        """Eager models: the module's own probabilities, rows picked per reader. SDPA models: each reader's
        rows computed by the family's eager function (:mod:`.attn_rows`), once checked against eager. A layer
        with several attention sublayers (LongCat-Flash) gives their heads side by side ``[B, n·H, R, T]``,
        delivered when its last sublayer has run."""
        from . import attn_rows

        name = f"blocks.{layer}.attn.hook_pattern"
        modules = self.spec.attention_modules(self.lm.hf, layer)
        last = len(modules) - 1
        parts: list = []  # one forward of the layer: per sublayer, what it gave (eager) or each reader's rows

        def collect(i, got):
            if i == 0:
                parts.clear()
            parts.append(got)
            if i == last:
                done = list(parts)
                parts.clear()
                return done
            return None

        impl = attn_rows.implementation(self.lm)
        if impl == "eager":
            def pattern(i):
                def hook(module, args, output):
                    probs = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                    if not isinstance(probs, torch.Tensor) or probs.dim() != 4:
                        raise RuntimeError(f"{name}: {type(module).__name__} returned no attention probabilities "
                                           f"(got {type(probs).__name__}); load the model with eager attention")
                    done = collect(i, probs)
                    if done is not None:
                        self._run(name, done[0] if len(done) == 1 else torch.cat(done, 1))
                return hook
            return [m.register_forward_hook(pattern(i)) for i, m in enumerate(modules)]
        if impl != "sdpa":
            raise ValueError(f"{name}: attention probabilities are computed for eager or sdpa attention, not "
                             f"{impl!r}; load the model with rl.load(..., attn_implementation='sdpa') or 'eager'")
        reason = attn_rows.check_rows(self.lm)
        if reason is not None:
            raise ValueError(f"{name}: attention rows cannot be computed without eager attention on this "
                             f"{self.spec.family} model: {reason}; load it with attn_implementation='eager'")

        def rows(i):
            def fn(module, query, key, value, mask, kwargs):
                pt = self._points.get(name)
                readers = list(pt.reads if pt is not None else ())
                done = collect(i, [attn_rows.rows_probs(module, query, key, value, mask, kwargs, r.rows)
                                   for r in readers])
                for j, r in enumerate(readers if done is not None else ()):
                    r.deliver(done[0][j] if len(done) == 1 else torch.cat([d[j] for d in done], 1))
            return fn
        return [attn_rows.RowsRequest(m, rows(i)) for i, m in enumerate(modules)]

    def _install_mask(self, module, name: str):
        """The mask kwarg of the attention module, or, where the module builds its mask itself from an
        indexer's top-k (GLM-5-Next), the mask it builds (:mod:`.mask_builder`)."""
        from .mask_builder import BuilderHook, builder

        method = builder(module)
        if method is not None:
            return BuilderHook(module, method, lambda mask: self._run(name, mask), name)
        return module.register_forward_pre_hook(self._mask_hook(name), with_kwargs=True)

    def _mask_hook(self, name):
        def hook(module, args, kwargs):
            if "attention_mask" not in kwargs:
                raise RuntimeError(f"{type(module).__name__} gets its attention mask positionally; {name} supports "
                                   "attention modules that take attention_mask by keyword")
            return args, {**kwargs, "attention_mask": self._run(name, kwargs["attention_mask"])}
        return hook

    # -- routers: one tap per layer, shared by the logits and choice points ---------------------------
    def _install_tap(self, layer: int) -> list:
        state = self._routers.get(layer)
        if state is not None:
            state["users"] += 1
            return [_Release(self, layer)]
        s, hf = self.spec, self.lm.hf
        scope = s.routing_scope(hf, layer)
        lname, cname = f"blocks.{layer}.router.hook_logits", f"blocks.{layer}.router.hook_choice"

        def on_logits(x):
            return self._run(lname, x)

        def on_choice(x):
            pt = self._points.get(cname)
            if pt is None or not pt.edits:
                return x
            for fn in pt.edits:
                x = fn(x)
            return x

        def on_select(x):
            pt = self._points.get(f"blocks.{layer}.router.hook_select")
            for fn in (pt.edits if pt is not None else ()):
                x = fn(x)
            return x

        stack: list[RoutingTap] = []

        def observe(func, args, out):
            obs = self._observers.get(layer)
            if obs is not None:
                obs(func, args, out)

        def enter(module, args, kwargs):
            tap = RoutingTap(s.n_experts, s.hidden_size, on_logits, on_choice, on_select,
                             observe if s.experts_kind == "module_list" else None, s.router_shared_rows)
            tap.__enter__()
            stack.append(tap)

        def leave(module, args, kwargs, output):
            tap = stack.pop()
            tap.__exit__(None, None, None)
            self.taps_seen[layer] = self.taps_seen.get(layer, 0) + tap.hits

        h1 = scope.register_forward_pre_hook(enter, with_kwargs=True)
        h2 = scope.register_forward_hook(leave, with_kwargs=True, always_call=True)
        self._routers[layer] = {"users": 1, "handles": (h1, h2)}
        return [_Release(self, layer)]

    # -- experts' inputs -----------------------------------------------------------------------------
    def _install_route(self, layer: int) -> list:
        s, hf = self.spec, self.lm.hf
        name = f"blocks.{layer}.experts.hook_route"
        if s.experts_kind == "module_list":  # per-expert MLP modules (remote code): see .experts_list
            from .experts_list import ListRoute

            route = ListRoute(self, layer, name)
            handles = self._install_tap(layer)  # the tap sees the top-k and the weights derived from it
            self._observers[layer] = route.observe
            return handles + route.install() + [_Forget(self._observers, layer)]
        if s.experts_io == "dense_scores":  # Llama 4: the router's [T, E] scores scale the experts' inputs
            k = s.top_k

            def scores_hook(module, args, output):
                scores = output[0]
                w, idx = scores.topk(k, dim=-1)
                w2 = self._run_route(name, idx, w)
                if w2 is w:
                    return output
                return (scores.scatter(-1, idx, w2),) + tuple(output[1:])
            return [s.router(hf, layer).register_forward_hook(scores_hook)]
        experts = s.experts(hf, layer)
        params = list(inspect.signature(experts.forward).parameters)
        i_name, w_name = params[1], params[2]

        def pre(module, args, kwargs):
            args = list(args)
            idx = args[1] if len(args) > 1 else kwargs[i_name]
            w = args[2] if len(args) > 2 else kwargs[w_name]
            w2 = self._run_route(name, idx, w)
            if w2 is w:
                return None
            if len(args) > 2:
                args[2] = w2
            else:
                kwargs = {**kwargs, w_name: w2}
            return tuple(args), kwargs

        return [experts.register_forward_pre_hook(pre, with_kwargs=True)]


class _PatternReader:
    """A reader of ``attn.hook_pattern`` with the query rows it wants (None: all)."""

    def __init__(self, fn: Callable, rows: torch.Tensor | None):
        self.fn, self.rows = fn, rows

    def __call__(self, full: torch.Tensor) -> None:  # eager: the full probabilities [B, H, T, T]
        from .attn_rows import gather_rows

        self.fn(gather_rows(full, self.rows))

    def deliver(self, rows: torch.Tensor) -> None:  # sdpa: already the rows [B, H, R, T]
        self.fn(rows)


class _Forget:
    """Handle-like: removes a layer's routing-scope observer."""

    def __init__(self, table: dict, layer: int):
        self.table, self.layer = table, layer

    def remove(self) -> None:
        self.table.pop(self.layer, None)


class _Release:
    """Handle-like: drops one user of a layer's tap, removing its hooks with the last one."""

    def __init__(self, hl: HookLayer, layer: int):
        self.hl, self.layer = hl, layer

    def remove(self) -> None:
        state = self.hl._routers.get(self.layer)
        if state is None:
            return
        state["users"] -= 1
        if state["users"] == 0:
            for h in state["handles"]:
                h.remove()
            del self.hl._routers[self.layer]
