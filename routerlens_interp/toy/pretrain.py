"""The reproducible pretraining recipe of the bundled toy model.

    python -m routerlens_interp.toy.pretrain --out DIR --seed S [--device cuda] [--steps N] ...

Builds the world (seed 0, the one the toy data sets use), the tokenizer and an OLMoE model from
``OlmoeConfig``; trains on documents from ``corpus.DocSampler`` (reading curriculum first, then the
full mixture) with the load-balancing auxiliary loss; every ``--eval-every`` steps measures
open-book EM on unseen people, closed-book recall and conflict EM / memory rate by greedy decoding
and appends them with the loss to ``DIR/log.jsonl``. Checkpoints (``DIR/checkpoint.safetensors``:
tensors + JSON, never unpickled; an old pickle ``checkpoint.pt`` is refused) let a run resume. At the
end the model is saved with ``save_pretrained`` (``output_router_logits`` False) together with the
tokenizer and ``recipe.json`` (arguments, corpus size, time, final metrics).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import OlmoeConfig, OlmoeForCausalLM, PreTrainedTokenizerFast

from routerlens_interp import safe_state
from routerlens_interp.errors import UserError
from routerlens_interp.toy.corpus import DocSampler, tokenizer_texts
from routerlens_interp.toy.data import WORLD_SEED, get_world
from routerlens_interp.toy.evaluate import toy_metrics
from routerlens_interp.toy.tokenizer import single_token_report, train_tokenizer


CHECKPOINT, OLD_CHECKPOINT = "checkpoint.safetensors", "checkpoint.pt"
CKPT_KIND = "routerlens toy pretraining checkpoint"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=826)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=48)
    p.add_argument("--tie", type=int, default=1, help="tie input and output embeddings")
    p.add_argument("--aux-coef", type=float, default=0.01)
    p.add_argument("--answer-weight", type=float, default=1.0, help="loss weight of answer tokens (+EOS)")
    p.add_argument("--p-present", type=float, default=0.3, help="P(asked fact in a known-person context)")
    p.add_argument("--reading-warmup", type=float, default=0.1, help="fraction of steps with reading docs only")
    p.add_argument("--p-hard", type=float, default=0.0, help="share of read contexts with mostly same-type distractors")
    p.add_argument("--read-max-facts", type=int, default=4)
    p.add_argument("--world", default="v1", choices=["v1", "v2"],
                   help="context layout: v1 (the shipped model) or v2 (2-4 values of the asked type per context)")
    p.add_argument("--mix", default="", help="e.g. memory=0.3,bio=0.08,read=0.4,known=0.22")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-n", type=int, default=200)
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop (and save) after this long; 0 = no limit")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave)")
    p.add_argument("--experts-impl", default="", help="transformers experts_implementation (default: its own)")
    p.add_argument("--auto-minutes", type=float, default=0.0,
                   help="set --steps from a timing probe so that training takes about this long (new runs only)")
    p.add_argument("--init-from", default="", help="continue from a saved model directory (its tokenizer too)")
    p.add_argument("--final-eval-n", type=int, default=0, help="examples per test set in the final eval (0 = all)")
    return p.parse_args(argv)


def build_tokenizer(out: Path, init_from: str = "") -> PreTrainedTokenizerFast:
    world = get_world(WORLD_SEED)
    if (out / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(out)
    if init_from:
        tok = PreTrainedTokenizerFast.from_pretrained(init_from)
        tok.save_pretrained(out)
        return tok
    tok = train_tokenizer(tokenizer_texts(world))
    bad = single_token_report(tok, world.all_words())
    if bad:
        print(f"warning: {len(bad)} names/values are not single tokens, e.g. {bad[:5]}")
    tok.save_pretrained(out)
    return tok


def build_model(args, tok) -> OlmoeForCausalLM:
    cfg = OlmoeConfig(
        vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        num_experts=args.experts, num_experts_per_tok=args.top_k, max_position_embeddings=512,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=bool(args.tie), router_aux_loss_coef=args.aux_coef, output_router_logits=False,
        norm_topk_prob=False, initializer_range=0.02,
    )
    cfg.architectures = ["OlmoeForCausalLM"]
    if getattr(args, "world", "v1") != "v1":  # the demo and the data loaders read it to pick toy2-* data
        cfg.routerlens_toy_world = args.world
    torch.manual_seed(args.seed)
    kw = {"experts_implementation": args.experts_impl} if args.experts_impl else {}
    return OlmoeForCausalLM._from_config(cfg, **kw)


class StepBatches(torch.utils.data.Dataset):
    """Item ``s`` = the (deterministic) batch of step ``s``: input ids, attention mask, loss weights."""

    def __init__(self, args, tok, start: int):
        self.args, self.tok, self.start = args, tok, start
        mix = dict(kv.split("=") for kv in args.mix.split(",")) if args.mix else None
        self.sampler = DocSampler(get_world(WORLD_SEED), mix={k: float(v) for k, v in mix.items()} if mix else None,
                                  p_present=args.p_present, reading_warmup=args.reading_warmup,
                                  p_hard=args.p_hard, read_max_facts=args.read_max_facts,
                                  layout=getattr(args, "world", "v1"))

    def __len__(self):
        return max(self.args.steps - self.start, 0)

    def __getitem__(self, i):
        step = self.start + i
        rng = random.Random(f"toy-pretrain-{self.args.seed}-{step}")
        docs = [self.sampler.sample(rng, step / self.args.steps) for _ in range(self.args.batch_size)]
        enc_p = self.tok([d[1] for d in docs], add_special_tokens=False)["input_ids"]
        enc_t = self.tok([d[2] for d in docs], add_special_tokens=False)["input_ids"]
        seqs = [p + t + [self.tok.eos_token_id] for p, t in zip(enc_p, enc_t)]
        L = max(map(len, seqs))
        ids = torch.full((len(seqs), L), self.tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), L), dtype=torch.long)
        w = torch.zeros((len(seqs), L), dtype=torch.float)  # weight of predicting token j (j >= 1)
        for j, (s, p) in enumerate(zip(seqs, enc_p)):
            ids[j, :len(s)] = torch.tensor(s)
            mask[j, :len(s)] = 1
            w[j, 1:len(s)] = 1.0
            w[j, len(p):len(s)] = self.args.answer_weight if docs[j][2] else 1.0
        return ids, mask, w


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(args.steps - args.warmup, 1)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def train_step(model, opt, ids, mask, w, aux_coef: float):
    """One optimiser step; loss = weighted next-token CE + ``aux_coef`` x load-balancing loss."""
    o = model(input_ids=ids, attention_mask=mask, output_router_logits=True, use_cache=False)
    ce = F.cross_entropy(o.logits[:, :-1].reshape(-1, o.logits.size(-1)).float(), ids[:, 1:].reshape(-1),
                         reduction="none").view(ids.size(0), -1)
    lm = (ce * w[:, 1:]).sum() / w[:, 1:].sum()
    loss = lm + aux_coef * o.aux_loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return lm.detach(), o.aux_loss.detach()


def probe_steps(args, tok, dev, n: int = 25) -> float:
    """Seconds per training step, timed on a throw-away model (falls back to eager experts on error)."""
    for attempt in range(2):
        try:
            m = build_model(args, tok).to(dev)
            o = torch.optim.AdamW(m.parameters(), lr=1e-4)
            ds = StepBatches(args, tok, 0)
            batches = [ds[i] for i in range(n)]
            for i, (ids, mask, w) in enumerate(batches):
                if i == 5:
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    t = time.time()
                train_step(m, o, ids.to(dev), mask.to(dev), w.to(dev), args.aux_coef)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return (time.time() - t) / (n - 5)
        except Exception as e:  # noqa: BLE001 - e.g. grouped_mm unsupported for this dtype/device
            if attempt or args.experts_impl == "eager":
                raise
            print(f"default experts implementation failed ({e!r}); using eager")
            args.experts_impl = "eager"


def log(out: Path, rec: dict):
    print(json.dumps(rec), flush=True)
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ck = out / CHECKPOINT
    if (out / OLD_CHECKPOINT).exists() and not ck.exists():
        raise UserError(f"{out / OLD_CHECKPOINT} {safe_state.OLD_PICKLE}; delete it to start over, or use a new --out")
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    tok = build_tokenizer(out, args.init_from)
    if args.auto_minutes and not ck.exists():
        dt = probe_steps(args, tok, dev)
        args.steps = int(args.auto_minutes * 60 / dt)
        print(f"probe: {dt * 1000:.1f} ms/step -> --steps {args.steps}")
        args.auto_minutes = 0.0
    if args.init_from:
        model = OlmoeForCausalLM.from_pretrained(args.init_from, dtype=torch.float32).to(dev)
    else:
        model = build_model(args, tok).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    start, tokens, elapsed0 = 0, 0, 0.0
    if ck.exists():
        state = safe_state.load(ck, CKPT_KIND, "delete it to start over, or use a new --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])  # moves the optimizer state to the parameters' device
        start, tokens, elapsed0 = state["step"], state["tokens"], state["elapsed"]
        print(f"resumed from step {start}")
    else:
        log(out, {"event": "start", "args": vars(args), "params": n_params, "vocab": len(tok)})

    def save_ckpt(step):
        safe_state.save(ck, {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "tokens": tokens,
                             "elapsed": elapsed0 + time.time() - t0}, CKPT_KIND)

    loader = torch.utils.data.DataLoader(StepBatches(args, tok, start), batch_size=None, shuffle=False,
                                         num_workers=args.workers, prefetch_factor=4 if args.workers else None,
                                         persistent_workers=False)
    t0 = time.time()
    model.train()
    run_loss, run_aux, run_n, step = 0.0, 0.0, 0, start
    for i, (ids, mask, w) in enumerate(loader):
        step = start + i
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        tokens += int(mask.sum())
        ids, mask, w = ids.to(dev, non_blocking=True), mask.to(dev, non_blocking=True), w.to(dev, non_blocking=True)
        lm, aux = train_step(model, opt, ids, mask, w, args.aux_coef)
        run_loss, run_aux, run_n = run_loss + lm, run_aux + aux, run_n + 1
        done = step + 1 >= args.steps
        over = args.max_minutes and (time.time() - t0) > args.max_minutes * 60
        if (step + 1) % args.eval_every == 0 or done or over:
            m = toy_metrics(model, tok, "dev", n=args.eval_n, world=getattr(args, "world", "v1"))
            log(out, {"step": step + 1, "tokens": tokens, "loss": float(run_loss) / run_n, "aux": float(run_aux) / run_n,
                      "lr": lr_at(step, args), "elapsed": round(elapsed0 + time.time() - t0, 1), **m})
            run_loss, run_aux, run_n = 0.0, 0.0, 0
            model.train()
        if (step + 1) % args.ckpt_every == 0 or done or over:
            save_ckpt(step + 1)
        if over:
            print(f"time limit reached at step {step + 1}")
            break
    finish(model, tok, args, out, step + 1 if args.steps > start else start, tokens, elapsed0 + time.time() - t0, n_params)


def finish(model, tok, args, out: Path, steps_done: int, tokens: int, elapsed: float, n_params: int):
    """Save the model + tokenizer and write recipe.json with final dev (first 100) and test metrics."""
    model.eval()
    model.config.output_router_logits = False
    model.save_pretrained(out)
    tok.save_pretrained(out)
    world = getattr(args, "world", "v1")
    dev_m = toy_metrics(model, tok, "dev", n=100, world=world)
    test_m = toy_metrics(model, tok, "test", n=args.final_eval_n or None, world=world)
    recipe = {
        "seed": args.seed, "world_seed": WORLD_SEED, "args": vars(args), "steps": steps_done,
        "corpus_tokens": tokens, "params": n_params, "vocab": len(tok), "seconds": round(elapsed, 1),
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__, "dev_metrics_n100": dev_m, "test_metrics": test_m,
        "command": "python -m routerlens_interp.toy.pretrain " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in ("", None)),
    }
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2))
    log(out, {"event": "final", "dev_n100": dev_m, "test": test_m})
    return recipe


if __name__ == "__main__":
    main()
