"""Hugging Face Hub ids: check a repository's ``model_index.json`` and code files, then load the pipeline.

The cache is tried first (offline, no request); only a repository it lacks, or holds in part, is asked from the
Hub, and only where ``HF_HUB_OFFLINE`` is not set. The commit that was checked is the commit that is loaded.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from diffprune.archs.family import SUPPORTED_PIPELINES
from diffprune.errors import DiffpruneError, first_line
from diffprune.integrity import check_model_index, check_no_code, read_json
from diffprune.precision import dtype_kwargs

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids requests to the Hub."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def _quiet_diffusers():
    from diffusers.utils import logging as dlogging

    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # diffusers otherwise logs each failed connection attempt
    try:
        yield
    finally:
        dlogging.set_verbosity(verbosity)


def checked_hub_index(repo_id: str, cache_dir: str | None, *, online: bool,
                      revision: str | None = None) -> tuple[str, dict] | None:
    """The commit and ``model_index.json`` of a Hub repository, checked (a supported pipeline, library classes
    only, no code files). ``online=False`` reads the cache only and returns None when the repository is not
    there; ``online=True`` asks the Hub (one quick request for the file list first) and raises
    :class:`DiffpruneError` when it cannot. ``revision``: a commit (default: the newest)."""
    from huggingface_hub import hf_hub_download, model_info

    files = None
    if online:
        if offline():
            raise DiffpruneError(f"'{repo_id}' is not a local folder and not in the Hugging Face cache, "
                                 "and HF_HUB_OFFLINE is set; download it where the Hub is reachable")
        try:  # file downloads would retry an unreachable Hub with back-off
            info = model_info(repo_id, revision=revision)
        except Exception as e:
            raise DiffpruneError(f"cannot load '{repo_id}': no local folder of that name, not in the Hugging Face "
                                 f"cache, and the Hub did not answer ({first_line(e)})") from None
        files, revision = [s.rfilename for s in info.siblings or []], info.sha
    try:
        index = Path(hf_hub_download(repo_id, "model_index.json", cache_dir=cache_dir, local_files_only=not online,
                                     revision=revision))
    except Exception as e:
        if not online:
            return None
        raise DiffpruneError(f"cannot load '{repo_id}': no local folder of that name, not in the Hugging Face "
                             f"cache, and the Hub did not provide it ({first_line(e)})") from None
    data = read_json(index)
    cls_name = data.get("_class_name")
    if cls_name not in SUPPORTED_PIPELINES:  # refuse before downloading gigabytes
        raise DiffpruneError(f"unsupported model: '{repo_id}' is a {cls_name}; diffprune supports "
                             f"{', '.join(SUPPORTED_PIPELINES)}")
    check_model_index(data, f"{repo_id}/model_index.json")
    check_no_code(index.parent, files)  # the cached snapshot, or the repository's full file list
    return index.parent.name, data  # snapshots/<commit>/model_index.json


def find_hub_index(repo_id: str, cache_dir: str | None = None) -> tuple[str, dict, bool]:
    """:func:`checked_hub_index` from the cache, else from the Hub: ``(commit, index, online)``."""
    with _quiet_diffusers():
        found = checked_hub_index(repo_id, cache_dir, online=False)
        if found is not None:
            return (*found, False)
        return (*checked_hub_index(repo_id, cache_dir, online=True), True)


def load_hub(repo_id: str, dtype, cache_dir: str | None, overrides: dict | None = None,
             revision: str | None = None):
    """The pipeline of a Hub id, checked first. ``overrides`` are components already loaded (e.g. a transformer
    converted from a single file): diffusers neither loads nor downloads those. ``revision``: the commit a caller
    already checked with :func:`find_hub_index` (so the components it loaded and the rest come from one commit)."""
    from diffusers import DiffusionPipeline

    with _quiet_diffusers():
        for online in (False, True):
            found = checked_hub_index(repo_id, cache_dir, online=online, revision=revision)
            if found is None:
                continue
            try:
                return DiffusionPipeline.from_pretrained(repo_id, cache_dir=cache_dir, local_files_only=not online,
                                                         revision=found[0], **(overrides or {}), **dtype_kwargs(dtype))
            except Exception as e:
                if not online:
                    continue  # partly cached: let the Hub complete it
                raise DiffpruneError(f"cannot load '{repo_id}': {first_line(e)}") from None
    raise AssertionError("unreachable")
