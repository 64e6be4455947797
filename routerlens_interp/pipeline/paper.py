"""The paper's published numbers (Bai et al., EMNLP 2025) and recipe, to print beside a run's own.

Numbers are EM/F1 ×100 from the paper's tables (DESIGN §1); ``None`` where the paper reports nothing for a cell.
"""
from __future__ import annotations

#: model key → hub ids / names it matches (lower-case substrings of the loaded name or path)
PAPER_MODELS = {
    "OLMoE-1B-7B": ("olmoe-1b-7b",),
    "DeepSeek-V2-Lite": ("deepseek-v2-lite",),
    "MiniCPM-MoE-8x2B": ("minicpm-moe-8x2b", "minicpm-moe"),
    "Mixtral-8x7B": ("mixtral-8x7b",),
}

#: (model, data set) → {row: "EM/F1"}: base → router tuning; masking and CEFT vs FFT where published.
PAPER_NUMBERS = {
    ("OLMoE-1B-7B", "squad"): {"base": "26.6/49.4", "router_tuned": "80.5/88.1", "ceft_em": "83.1", "fft_em": "81.6"},
    ("OLMoE-1B-7B", "nq-swap"): {"base": "28.1/40.5", "router_tuned": "76.4/77.8", "masked_other_em": "33.2",
                                 "masked_ce_em": "18.5", "ceft_em": "90.5", "fft_em": "88.3"},
    ("OLMoE-1B-7B", "confiqa"): {"base": "38.7/49.9", "router_tuned": "76.9/79.9"},
    ("DeepSeek-V2-Lite", "squad"): {"base": "25.2/48.6", "router_tuned": "83.6/91.1"},
    ("DeepSeek-V2-Lite", "nq-swap"): {"base": "27.4/38.0", "router_tuned": "82.2/84.3"},
    ("DeepSeek-V2-Lite", "confiqa"): {"base": "19.1/35.3", "router_tuned": "75.3/78.2"},
    ("MiniCPM-MoE-8x2B", "squad"): {"base": "45.8/65.1", "router_tuned": "80.5/89.0"},
    ("MiniCPM-MoE-8x2B", "nq-swap"): {"base": "42.8/50.5", "router_tuned": "71.7/74.0"},
    ("MiniCPM-MoE-8x2B", "confiqa"): {"base": "38.6/48.2", "router_tuned": "65.7/70.3"},
    ("Mixtral-8x7B", "squad"): {"base": "21.1/43.5", "router_tuned": "49.6/63.2"},
    ("Mixtral-8x7B", "nq-swap"): {"base": "16.3/29.9", "router_tuned": "64.1/67.1"},
    ("Mixtral-8x7B", "confiqa"): {"base": "12.3/20.3", "router_tuned": "67.6/74.9"},
}

#: data set names (as given to ``--data``, lower-case; a directory's last part counts) → the paper's data set
_DATA_KEYS = {"squad": "squad", "nq-swap": "nq-swap", "nqswap": "nq-swap", "nq_swap": "nq-swap",
              "confiqa": "confiqa", "confiqa-mc": "confiqa"}


def paper_key(model_name: str, data_name: str) -> tuple[str, str] | None:
    """``(paper model, paper data set)`` for a loaded model name and a ``--data`` name, or ``None``."""
    m = str(model_name).lower()
    model = next((k for k, subs in PAPER_MODELS.items() if any(s in m for s in subs)), None)
    d = str(data_name).rstrip("/").lower()
    d = d.rsplit("/", 1)[-1]
    data = _DATA_KEYS.get(d)
    if model is None or data is None:
        return None
    return model, data


def paper_numbers(model_name: str, data_name: str) -> dict | None:
    """``{"model", "data", "numbers": {row: "EM/F1"}}`` where the paper reports this model × data set, else None."""
    key = paper_key(model_name, data_name)
    if key is None or key not in PAPER_NUMBERS:
        return None
    return {"model": key[0], "data": key[1], "numbers": dict(PAPER_NUMBERS[key])}


def paper_recipe() -> dict:
    """The paper's public recipe (OLMoE-1B-7B-Instruct): lr 5e-4, 3 epochs, cosine with 10 % warm-up, batch 8,
    examples over 300 tokens dropped, best checkpoint by dev loss, seed 826 — the same for RT, CEFT and FFT."""
    from ..train.config import PAPER_RECIPE

    return dict(PAPER_RECIPE)


#: CEs per layer in the paper (of 64, top-8 routing)
PAPER_N_CES = 8
