"""Searchers that agree with the trials Tune restores, however the pod died.

Tune saves a sweep's state as several files (the trials' statuses in ``experiment_state-*``,
the searcher's in ``basic-variant-state-*`` or ``search_gen_state-*`` and ``searcher-state-*``)
and uploads the folder to S3 in the background while the next save may rewrite it. A pod killed
mid-upload can leave S3 with trials newer than the searcher: seen in CI, the trials said
``00000`` done and ``00001`` running while the searcher still counted ``00000`` as its one
live trial and had made only one. Restored as it was, the searcher waited for ``00000`` to end
(it never would: the sweep hung with ``maxConcurrentTrials: 1``), and without the limit it
would have made a second ``00001``, whose files in S3 would have replaced the first's.

The searchers here restore Tune's state, then take the trials' statuses as the truth: the
trials still to run are the live ones, and the variant generator moves on past every trial
that already exists, drawing the same samples it drew the first time. A searcher saved after
trials that never reached the trials' file is the rarer case: TPE's wrapper then suggests new
trials in their place; the variant generator cannot draw those samples again and says so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.basic_variant import BasicVariantGenerator

log = logging.getLogger("kexp_trainers.tune")

#: Tune's name for its trials' state files (``TuneController.CKPT_FILE_TMPL``).
EXPERIMENT_STATE_GLOB: Final = "experiment_state-*.json"
#: The statuses of trials that a restore with ``resume_unfinished=True`` runs again.
UNFINISHED: Final = frozenset({"PENDING", "RUNNING", "PAUSED"})


@dataclass(frozen=True)
class RestoredTrial:
    """What the newest experiment state says of one trial."""

    trial_id: str
    status: str


def restored_trials(folder: str | Path) -> list[RestoredTrial] | None:
    """The trials of the newest experiment state in ``folder``; None when there is none.

    Newest by name, as Tune picks it: the names end in the session's start time.
    """
    states = sorted(Path(folder).glob(EXPERIMENT_STATE_GLOB))
    if not states:
        return None
    state = json.loads(states[-1].read_text())
    trials = []
    for trial_json, _metadata in state.get("trial_data", []):
        trial = json.loads(trial_json)
        trials.append(RestoredTrial(trial_id=str(trial["trial_id"]), status=str(trial["status"])))
    return trials


def unfinished(trials: Iterable[RestoredTrial]) -> set[str]:
    """The trials the restored sweep runs again: the only ones that will report completion."""
    return {t.trial_id for t in trials if t.status in UNFINISHED}


def _index(trial_id: str, prefix: str) -> int | None:
    """The number a variant generator gave ``trial_id`` (``<prefix><5 digits>``)."""
    if not trial_id.startswith(prefix):
        return None
    digits = trial_id[len(prefix) :]
    return int(digits) if digits.isdigit() else None


class ResumableVariantGenerator(BasicVariantGenerator):  # type: ignore[misc]
    """Tune's variant generator (random and grid search), restored in step with the trials."""

    def restore_from_dir(self, dirpath: str) -> None:
        """Restore the saved state, then correct it from the restored trials."""
        super().restore_from_dir(dirpath)
        trials = restored_trials(dirpath)
        if trials is not None:
            self.catch_up(trials)

    def catch_up(self, trials: Sequence[RestoredTrial]) -> None:
        """Count as live only the trials that will run again; skip past those already made."""
        live = unfinished(trials)
        if live != self._live_trials:
            log.warning(
                "the searcher's saved live trials %s disagree with the restored trials; using %s",
                sorted(self._live_trials),
                sorted(live),
            )
        self._live_trials = live
        indexes = [i for t in trials if (i := _index(t.trial_id, self._uuid_prefix)) is not None]
        made = max(indexes, default=-1) + 1
        skipped = 0
        # One iterator per add_configurations call; a sweep makes one.
        while self._iterators and self._iterators[-1].counter < made and not self.is_finished():
            if self._trial_iter is None:
                self._trial_iter = iter(self._trial_generator)
            try:
                next(self._trial_iter)  # the sample it drew before: drawn again, not run
            except StopIteration:
                self.set_finished()
                break
            skipped += 1
        if skipped:
            log.warning(
                "the searcher's saved state was %d trial(s) behind the restored trials; "
                "moved it on to trial %d",
                skipped,
                made,
            )
        elif self._iterators and self._iterators[-1].counter > made:
            # Its random state cannot be wound back to draw those samples again.
            log.warning(
                "the searcher had made %d trial(s) that the restored trials do not hold; "
                "the sweep runs that many fewer than numSamples",
                self._iterators[-1].counter - made,
            )


class ResumableSearchGenerator(SearchGenerator):  # type: ignore[misc]
    """Tune's wrapper of a searcher (TPE), restored in step with the trials.

    A trial the searcher's saved state never suggested still runs to its end, but its results
    are not passed to the searcher, which would fail on a trial it does not know.
    """

    def __init__(self, searcher: Any) -> None:
        super().__init__(searcher)
        #: Restored trials that the searcher's saved state does not know.
        self.untracked: set[str] = set()

    def restore_from_dir(self, dirpath: str) -> None:
        """Restore the saved state, then correct it from the restored trials."""
        super().restore_from_dir(dirpath)
        trials = restored_trials(dirpath)
        if trials is not None:
            self.catch_up(trials)

    def _limiter(self) -> ConcurrencyLimiter | None:
        searcher = self.searcher
        while searcher is not None and not isinstance(searcher, ConcurrencyLimiter):
            searcher = getattr(searcher, "searcher", None)
        return searcher

    def _base(self) -> Any:
        searcher = self.searcher
        while hasattr(searcher, "searcher"):
            searcher = searcher.searcher
        return searcher

    def catch_up(self, trials: Sequence[RestoredTrial]) -> None:
        """Count every restored trial as made, and as live only those that will run again.

        A searcher that had suggested more trials than were restored suggests new ones in
        their place, so the sweep still runs numSamples.
        """
        live = unfinished(trials)
        self._counter = len(trials)
        # OptunaSearch keeps the trials it suggested by id; a searcher that keeps none is
        # trusted to know them all.
        known = getattr(self._base(), "_ot_trials", None)
        self.untracked = {t for t in live if known is not None and t not in known}
        limiter = self._limiter()
        if limiter is not None:
            if limiter.live_trials != live:
                log.warning(
                    "the searcher's saved live trials %s disagree with the restored trials; "
                    "using %s",
                    sorted(limiter.live_trials),
                    sorted(live),
                )
            limiter.live_trials = set(live)
            limiter.num_unfinished_live_trials = len(live)
            limiter.cached_results = {k: v for k, v in limiter.cached_results.items() if k in live}
        if self.untracked:
            log.warning(
                "trial(s) %s were made after the searcher's saved state; they run to the end "
                "without informing the searcher",
                sorted(self.untracked),
            )

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Pass a result on, unless the searcher does not know the trial."""
        if trial_id not in self.untracked:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """Pass the end of a trial on; an unknown trial only frees its place."""
        if trial_id not in self.untracked:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        self.untracked.discard(trial_id)
        limiter = self._limiter()
        if limiter is not None and trial_id in limiter.live_trials:
            limiter.live_trials.discard(trial_id)
            limiter.num_unfinished_live_trials -= 1
