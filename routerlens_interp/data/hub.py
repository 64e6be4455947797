"""The named data sets on the Hugging Face hub (and ConFiQA's pinned GitHub files): what to fetch and how.

Only :func:`fetch_rows` touches the network (through ``datasets.load_dataset``, looked up at call time
so tests can monkeypatch it); it returns raw rows of one *hub* split. Our split names and the cuts
that make dev disjoint from test are applied by the caller (:mod:`.loaders`, :mod:`.splits`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import UserError

__all__ = ["HubSpec", "HUB_DATASETS", "CONFIQA_URL", "CONFIQA_COMMIT", "HubDataUnavailable", "fetch_rows",
           "describe_hub_failure"]


class HubDataUnavailable(UserError, RuntimeError):
    """A named data set could not be fetched (offline, not found, gated); a local file works."""


#: ConFiQA (Bi et al., "Context-DPO", 2024) is three JSON files (lists of records) in the authors'
#: GitHub repository byronBBL/Context-DPO, whose only branch is ``master``; read through ``datasets``'
#: "json" builder from this commit (the newest on 2025-02-17; the files date from its first commit).
CONFIQA_COMMIT = "557dadeeb9f47407890a5626128ca99907770b22"
#: ``{subset}`` is QA, MR or MC. Override with the environment variable ``ROUTERLENS_CONFIQA_URL``
#: (same ``{subset}`` placeholder), or pass a local copy of the file to ``load_dataset``.
CONFIQA_URL = f"https://raw.githubusercontent.com/byronBBL/Context-DPO/{CONFIQA_COMMIT}/ConFiQA/ConFiQA-{{subset}}.json"


@dataclass(frozen=True)
class HubSpec:
    """How to fetch one named data set through ``datasets.load_dataset``.

    ``splits`` maps our ``train`` / ``test`` to the hub's split names for a set published as train +
    validation (our dev is carved from its train, see :mod:`.splits`); ``single_split`` names the only
    split of a set published as one (cut into train / dev / test); ``subset`` keeps only rows whose
    ``subset`` column equals it (MRQA), before any row is materialised.
    """

    path: str
    format: str
    config: str | None = None
    data_files: str | None = None
    splits: dict = field(default_factory=dict)
    single_split: str | None = None
    subset: str | None = None
    description: str = ""


_TWO = {"train": "train", "test": "validation"}
HUB_DATASETS: dict[str, HubSpec] = {
    "squad": HubSpec("rajpurkar/squad", "squad", splits=_TWO, description="SQuAD v1.1"),
    "nq-swap": HubSpec("pminervini/NQ-Swap", "nq-swap", single_split="dev",
                       description="NQ-Swap (substituted contexts; one hub split 'dev', 4,746 rows)"),
    # The paper (and RouterLens' data/confiqa-mc) use ConFiQA-MC: "confiqa" names it.
    "confiqa": HubSpec("json", "confiqa", data_files="MC", single_split="train",
                       description="ConFiQA-MC (multi-conflict; the paper's variant)"),
    "confiqa-mc": HubSpec("json", "confiqa", data_files="MC", single_split="train", description="ConFiQA-MC"),
    "confiqa-qa": HubSpec("json", "confiqa", data_files="QA", single_split="train",
                          description="ConFiQA-QA (single-hop)"),
    "confiqa-mr": HubSpec("json", "confiqa", data_files="MR", single_split="train",
                          description="ConFiQA-MR (multi-hop, one conflict)"),
    # MRQA's test split holds only the out-of-domain sets; NQ and HotpotQA live in train/validation.
    "nq": HubSpec("mrqa-workshop/mrqa", "mrqa", config="plain_text", splits=_TWO, subset="NaturalQuestionsShort",
                  description="Natural Questions (MRQA subset NaturalQuestionsShort)"),
    "hotpotqa": HubSpec("mrqa-workshop/mrqa", "mrqa", config="plain_text", splits=_TWO, subset="HotpotQA",
                        description="HotpotQA (MRQA subset HotpotQA)"),
}


def _chain(err: BaseException):
    seen = []
    while err is not None and all(err is not s for s in seen):
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def _status(err: BaseException) -> int | None:
    resp = getattr(err, "response", None)
    code = getattr(resp, "status_code", None) or getattr(err, "status", None) or getattr(err, "code", None)
    return code if isinstance(code, int) else None


_OFFLINE = ("ConnectError", "ConnectTimeout", "TimeoutException", "ReadTimeout", "ConnectionError",
            "ClientConnectorError", "ServerDisconnectedError", "OfflineModeIsEnabled", "LocalEntryNotFoundError",
            "gaierror", "TimeoutError", "NewConnectionError", "MaxRetryError")
_NOT_FOUND = ("DatasetNotFoundError", "RepositoryNotFoundError", "EntryNotFoundError", "RemoteEntryNotFoundError",
              "RevisionNotFoundError", "FileNotFoundError", "DataFilesNotFoundError", "FileNotFoundDatasetsError")


def describe_hub_failure(err: BaseException) -> tuple[str, str]:
    """``(kind, fix)`` for an exception of ``datasets.load_dataset``: kind is ``gated``, ``offline``,
    ``not found`` or ``failed``. The whole cause chain is read (``datasets`` wraps the hub's errors)."""
    chain = _chain(err)
    names = [{c.__name__ for c in type(e).__mro__} for e in chain]
    text = " ".join(str(e) for e in chain).lower()
    if any("GatedRepoError" in n for n in names) or any(_status(e) in (401, 403) for e in chain) \
            or "gated" in text:
        return "gated", ("access refused (a gated or private data set): accept its terms on the hub page, then log in "
                         "(`hf auth login`, or set HF_TOKEN)")
    if any(n & set(_OFFLINE) for n in names) or "offline" in text or "couldn't reach" in text:
        return "offline", ("no network connection: connect, or run where the data set is in the `datasets` cache "
                           "(HF_DATASETS_OFFLINE=1 then reads it from there), or pass a local file path or directory")
    if any(n & set(_NOT_FOUND) for n in names) or any(_status(e) == 404 for e in chain):
        return "not found", ("nothing at that address: check the name (and ROUTERLENS_CONFIQA_URL if set), or pass a "
                             "local file path or directory")
    return "failed", "pass a local file path or directory instead"


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Can a TCP connection to ``url``'s host be opened? Only asked after a failure: fsspec reports an
    unreachable URL as FileNotFoundError ("Unable to find ..."), the same as a missing file."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    try:
        socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout=timeout).close()
        return True
    except OSError:
        return False


def fetch_rows(name: str, spec: HubSpec, hub_split: str) -> list[dict]:
    """Raw rows of the hub split ``hub_split`` of ``name``; only ``spec.subset``'s rows for MRQA.

    Raises :class:`HubDataUnavailable` saying whether the machine is offline, the data set was not
    found, or it is gated (each with its fix); UserError when MRQA rows carry no ``subset`` column.
    """
    import datasets  # attribute access at call time, so tests can monkeypatch datasets.load_dataset

    kwargs = {"split": hub_split}
    args = [spec.path] + ([spec.config] if spec.config else [])
    where = spec.path
    if spec.data_files is not None:
        url = os.environ.get("ROUTERLENS_CONFIQA_URL", CONFIQA_URL).format(subset=spec.data_files)
        kwargs["data_files"] = url
        where = url
    try:
        ds = datasets.load_dataset(*args, **kwargs)
    except Exception as err:  # offline, unknown repo, gated, …
        kind, fix = describe_hub_failure(err)
        if kind == "not found" and spec.data_files is not None and not _reachable(where):
            kind, fix = describe_hub_failure(ConnectionError(f"cannot connect to {where}"))
        cause = next((l.strip() for l in str(err).splitlines() if l.strip()), "")
        host = "GitHub" if spec.data_files is not None else "the hub"
        raise HubDataUnavailable(f"could not load {name!r} from {host} ({where}, split {hub_split!r}): {kind} "
                                 f"({type(err).__name__}: {cause[:200]}); {fix}") from err
    if spec.subset is not None:
        columns = list(getattr(ds, "column_names", None) or [])
        if "subset" not in columns:
            raise UserError(f"{where} split {hub_split!r} has no 'subset' column (columns: {columns}), so the rows of "
                            f"{spec.subset} cannot be told from the other MRQA sets; pass a local file of "
                            f"{spec.subset} records")
        # on the subset column alone, in Arrow batches: MRQA's train split has 516,819 rows over six sets
        kept = ds.filter(lambda s: [x == spec.subset for x in s], input_columns="subset", batched=True,
                         batch_size=10_000)
        if not len(kept):
            found = sorted(set(ds.unique("subset")))
            raise UserError(f"{where} split {hub_split!r} has no rows of subset {spec.subset!r} (subsets: {found}); "
                            "pass a local file")
        ds = kept
    return [dict(r) for r in ds]
