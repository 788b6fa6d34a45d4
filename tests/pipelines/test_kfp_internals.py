"""What nbship wraps in kfp.local is checked before a run: a changed kfp is a message."""

from __future__ import annotations

import pytest

from nbship.errors import BackendUnavailableError
from nbship.pipelines import kfp_internals
from nbship.pipelines.kfp_import import import_kfp


def test_this_kfp_has_everything_nbship_wraps() -> None:
    import_kfp()
    kfp_internals.require(fork_server=True)


def test_a_missing_cache_method_names_what_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    import_kfp()
    from kfp.local import cache

    monkeypatch.delattr(cache.LocalCache, "put")
    with pytest.raises(BackendUnavailableError, match="LocalCache.put is gone") as info:
        kfp_internals.require(fork_server=False)
    assert "kfp==2.17.3" in str(info.value.hint)


def test_a_changed_launcher_hook_says_how_to_run_without_the_fork_server(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import_kfp()
    from kfp.local import subprocess_task_handler

    monkeypatch.setattr(subprocess_task_handler, "run_local_subprocess",
                        lambda full_command: 0)
    with pytest.raises(BackendUnavailableError, match="no longer takes env_vars") as info:
        kfp_internals.require(fork_server=True)
    assert "NBSHIP_STEP_LAUNCH=subprocess" in str(info.value.hint)
    kfp_internals.require(fork_server=False)  # the cold start does not need it
