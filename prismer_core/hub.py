"""Checkpoints by Hugging Face Hub id: ``user/prismer-demo`` or ``user/prismer-demo@REVISION``.

Resolved by ``huggingface_hub.snapshot_download`` into its cache (``HF_HUB_CACHE``,
``~/.cache/huggingface/hub`` by default), so a snapshot downloaded once is found again offline
(``HF_HUB_OFFLINE=1``). Only the files a checkpoint reads are fetched: its JSON and YAML
records, the model card and safetensors files; the training state to resume from
(``trainer/``) and any pickle are left on the hub.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import PrismerError

#: What a checkpoint folder needs; everything else in a repository is not downloaded.
CHECKPOINT_FILES = ["*.json", "*.yaml", "*.safetensors", "README.md"]
_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?$")


class HubError(PrismerError):
    """A hub id that cannot be resolved (not cached offline, unknown repository or revision)."""


def looks_like_hub_id(text: str) -> bool:
    """``owner/name`` or ``owner/name@revision``, the way the hub spells repository ids."""
    return bool(_ID.match(text)) and not text.startswith((".", "/", "~"))


def resolve_hub_checkpoint(hub_id: str) -> Path:
    """The local snapshot folder of ``hub_id`` (``owner/name[@revision]``), downloading it
    unless it is cached and the hub is offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, _, revision = hub_id.partition("@")
    try:
        folder = snapshot_download(repo_id, revision=revision or None, allow_patterns=CHECKPOINT_FILES)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise HubError(
            f"{hub_id} is neither a folder here nor a Hugging Face Hub snapshot in the cache "
            f"({_cache()}), and the hub cannot be reached (offline): download it once with network, "
            "or give a local checkpoint folder"
        ) from None
    except RevisionNotFoundError:
        raise HubError(f"Hugging Face Hub model {repo_id} has no revision {revision!r}") from None
    except GatedRepoError:
        raise HubError(f"Hugging Face Hub model {repo_id} is gated: accept its terms and log in (huggingface-cli login)") from None
    except RepositoryNotFoundError:
        raise HubError(f"{hub_id} is neither a folder here nor a Hugging Face Hub model (no such repository, or it is private)") from None
    except Exception as exc:  # network failures and the like, whatever class the library raises
        raise HubError(f"cannot get {hub_id} from the Hugging Face Hub: {type(exc).__name__}: {_first_line(exc)}") from None
    return Path(folder)


def _cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]
