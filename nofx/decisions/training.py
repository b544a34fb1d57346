"""Train the decision engine's success model on its own history, judge it, promote it or not.

The data set (`history`) comes from what every decision leaves behind:

- an **outcome** (`actual_outcome` on the decision): the action carried out fixed the subject
  or not — one example, weight 1, with its time to recover;
- an **override** whose action then fixed the subject is evidence about both actions: the
  person's choice is the outcome example above, and the engine's own choice, which the person
  judged wrong in that context, is a failure example of weight `JUDGED_WEIGHT`;
- a **rejection**: the person judged the engine's choice wrong without trying anything — a
  failure example of weight `JUDGED_WEIGHT`.

Approvals add nothing (the outcome that follows does) and timeouts say nothing about the action.
A decision whose chosen candidate is not among its recorded candidates is skipped and counted.

The hold-out is time-ordered: the latest `HOLDOUT_SHARE` of decisions (never shuffled). On it
the challenger and the champion (the active model, else the Beta prior alone) are judged alike:
Brier score (each outcome weighted by the inverse of the propensity its choice was made with,
so explored choices are not over-counted) and AUC of the predicted success on the outcome
examples, and decision accuracy — of the held-out decisions whose carried-out action has an
outcome, the share (weighted alike) where the model's first choice agrees with it: the action
that fixed the subject ranked first, or one that did not fix it ranked below another. (Counting
only "ranks the action that worked first" would favour the champion, whose own choices the
held-out decisions mostly are.) The challenger is promoted only when it beats the champion: a
lower Brier score — a proper scoring rule, so a better-calibrated, sharper model — and a decision
accuracy no lower than the champion's by more than its standard error on this hold-out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from models.decisions import Candidate, DecisionContext, SuccessEstimate, SuccessModelReport
from nofx import model_registry as registry
from nofx.decisions.learned import (
    ARTIFACT_FORMAT,
    MODEL_TYPE,
    Bundle,
    Example,
    LearnedSuccessModel,
    LearningError,
    train,
)
from nofx.decisions.success import BetaSuccessModel, SuccessModel, load_priors
from nofx.logging import get_logger

JUDGED_WEIGHT = 0.5
MIN_PROPENSITY = 0.05  # inverse-propensity weights are clipped at 1 / this
HOLDOUT_SHARE = 0.25
MIN_HOLDOUT_DECISIONS = 5

Progress = Callable[[str], None]
log = get_logger(__name__)


@dataclass(frozen=True)
class Episode:
    """One decision's evidence: its examples, and for judging, its candidates and good action."""

    decision_id: str
    at: datetime
    context: dict[str, Any]
    candidates: list[Candidate]
    examples: list[Example]
    good: str | None  # the candidate that was carried out and fixed the subject


@dataclass
class History:
    episodes: list[Episode] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


def _candidates(alternatives: Any) -> dict[str, Candidate]:
    found = {}
    for alt in alternatives or []:
        raw = alt.get("candidate") if isinstance(alt, dict) else None
        if raw and raw.get("name") not in found:
            candidate = Candidate.model_validate(raw)
            found[candidate.name] = candidate
    return found


def history(engine: Engine, until: datetime | None = None) -> History:
    """Every decision with evidence in it, oldest first (module doc)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT d.id, d.created_at, d.context_data, d.chosen_action,"
                " COALESCE(d.alternatives_considered, '[]') || jsonb_build_array("
                " jsonb_build_object('candidate', d.result->'chosen_candidate')),"
                " d.actual_outcome,"
                " CAST(d.result->'exploration'->>'propensity' AS float),"
                " COALESCE(jsonb_agg(jsonb_build_object('type', f.feedback_type,"
                " 'lessons', f.lessons_learned)) FILTER (WHERE f.id IS NOT NULL), '[]')"
                " FROM autonomous_decisions d LEFT JOIN learning_feedback f"
                " ON f.decision_id = d.id AND f.feedback_type IN ('override', 'rejection')"
                " WHERE d.decision_type = 'healing' AND (CAST(:until AS timestamptz) IS NULL"
                " OR d.created_at < :until) GROUP BY d.id ORDER BY d.created_at, d.id"
            ),
            {"until": until},
        ).all()
    out = History()
    for decision_id, at, ctx, chosen, alternatives, outcome, propensity, feedback in rows:
        ctx = {k: v for k, v in (ctx or {}).items() if k != "incident_id"}
        try:
            DecisionContext.model_validate(ctx)
        except ValueError:
            out.skip("context unreadable")
            continue
        candidates = _candidates(alternatives)
        examples: list[Example] = []
        good = None
        if outcome and chosen in candidates:
            resolved = bool(outcome.get("resolved"))
            seconds = outcome.get("recovery_seconds")
            examples.append(
                Example(
                    ctx,
                    candidates[chosen],
                    resolved,
                    seconds if resolved else None,
                    propensity=min(1.0, max(float(propensity or 1.0), MIN_PROPENSITY)),
                )
            )
            good = chosen if resolved else None
        elif outcome:
            out.skip("carried-out action not among the candidates")
        for verdict in feedback:
            lessons = verdict.get("lessons") or {}
            judged = lessons.get("engine_choice")
            if judged not in candidates or (judged == chosen and verdict["type"] == "override"):
                continue
            if verdict["type"] == "override" and good is None:
                continue  # the person's choice did not fix it either: no verdict on the engine's
            examples.append(
                Example(ctx, candidates[judged], False, None, JUDGED_WEIGHT, verdict["type"])
            )
        if examples:
            out.episodes.append(
                Episode(str(decision_id), at, ctx, list(candidates.values()), examples, good)
            )
    return out


def split(
    episodes: Sequence[Episode], share: float = HOLDOUT_SHARE
) -> tuple[list[Episode], list[Episode]]:
    """Time-ordered: the oldest decisions train, the latest `share` are held out."""
    held = max(MIN_HOLDOUT_DECISIONS, round(len(episodes) * share))
    if len(episodes) - held < MIN_HOLDOUT_DECISIONS:
        raise LearningError(
            f"{len(episodes)} decision(s) with evidence: at least"
            f" {2 * MIN_HOLDOUT_DECISIONS} are needed for a time-ordered hold-out"
        )
    return list(episodes[:-held]), list(episodes[-held:])


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count half); None with one class only."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return round(wins / (len(pos) * len(neg)), 4)


def evaluate(model: SuccessModel, held: Sequence[Episode]) -> dict[str, Any]:
    """Brier, AUC and decision accuracy of `model` on the held-out decisions."""
    scores, labels, weights = [], [], []
    right = known = 0.0
    judged = 0
    for episode in held:
        ctx = DecisionContext.model_validate(episode.context)
        for example in episode.examples:
            if example.source != "outcome":
                continue
            scores.append(model.estimate(ctx, example.candidate).probability)
            labels.append(example.success)
            weights.append(1.0 / example.propensity)
            if len(episode.candidates) > 1:
                first = min(
                    episode.candidates,
                    key=lambda c: (-model.estimate(ctx, c).probability, c.escalation_rank, c.name),
                )
                agrees = (first.name == example.candidate.name) == example.success
                judged += 1
                known += 1.0 / example.propensity
                right += agrees / example.propensity
    # inverse-propensity weighted: an outcome the sampling policy rarely chooses counts for
    # the times it was not tried
    brier = (
        round(
            sum(w * (p - y) ** 2 for p, y, w in zip(scores, labels, weights, strict=True))
            / sum(weights),
            4,
        )
        if scores
        else None
    )
    return {
        "outcomes": len(scores),
        "brier": brier,
        "auc": auc(scores, labels),
        "decisions_judged": judged,
        "decision_accuracy": round(right / known, 4) if known else None,
    }


def beats(challenger: dict[str, Any], champion: dict[str, Any]) -> tuple[bool, str]:
    """A lower Brier score, and a decision accuracy no lower than the champion's by more than
    its standard error, on the same hold-out."""
    cb, pb = challenger["brier"], champion["brier"]
    if cb is None or pb is None:
        return False, "no held-out outcome to compare on"
    ca, pa = challenger["decision_accuracy"], champion["decision_accuracy"]
    n = champion.get("decisions_judged") or 0
    if ca is not None and pa is not None and n:
        allowance = math.sqrt(pa * (1.0 - pa) / n)
        if ca < pa - allowance:
            return False, (
                f"decision accuracy {ca:.3f} below the champion's {pa:.3f} by more than its"
                f" standard error ({allowance:.3f})"
            )
    if cb >= pb:
        return False, f"Brier {cb:.4f} not below the champion's {pb:.4f}"
    return True, f"Brier {cb:.4f} below the champion's {pb:.4f}"


def load_active(engine: Engine, prior: SuccessModel | None = None) -> LearnedSuccessModel | None:
    """The active success model on top of `prior` (the packaged Beta priors), or None."""
    model_id = registry.active_id(engine, MODEL_TYPE)
    if model_id is None:
        return None
    return load_model(engine, model_id, prior)


def load_model(
    engine: Engine, model_id: str, prior: SuccessModel | None = None
) -> LearnedSuccessModel:
    row, artifact = registry.load_artifact(engine, model_id)
    prior = prior or BetaSuccessModel(load_priors())
    return LearnedSuccessModel(Bundle.from_text(artifact), prior, row.version)


def train_and_judge(
    engine: Engine,
    *,
    now: datetime | None = None,
    progress: Progress | None = None,
    prior: SuccessModel | None = None,
) -> SuccessModelReport:
    """Build the data set, train a challenger, judge it against the champion, store it and
    promote it when it wins.

    Raises:
        LearningError: too little evidence for a hold-out or for training.
    """
    now = now or datetime.now(UTC)
    say = progress or (lambda _m: None)
    prior = prior or BetaSuccessModel(load_priors())
    found = history(engine, until=now)
    say(f"data set: {len(found.episodes)} decision(s) with evidence, skipped {found.skipped}")
    train_part, held = split(found.episodes)
    examples = [e for ep in train_part for e in ep.examples]
    say(f"training on {len(examples)} example(s) from {len(train_part)} decision(s)")
    bundle = train(examples)
    version = f"success-{now:%Y%m%dT%H%M%S}"
    challenger_model = LearnedSuccessModel(bundle, prior, version)
    say(f"judging on {len(held)} held-out decision(s)")
    challenger = evaluate(challenger_model, held)
    champion_id = registry.active_id(engine, MODEL_TYPE)
    champion_model: SuccessModel = (
        load_model(engine, champion_id, prior) if champion_id is not None else prior
    )
    champion = evaluate(champion_model, held)
    promoted, verdict = beats(challenger, champion)
    data = {
        "decisions": len(found.episodes),
        "train_decisions": len(train_part),
        "holdout_decisions": len(held),
        "holdout_from": held[0].at.isoformat(),
        "skipped": found.skipped,
        **bundle.summary,
    }
    metrics = {
        "holdout": challenger,
        "champion": {"model_id": champion_id or "beta-prior", **champion},
        "promotion": {"promoted": promoted, "verdict": verdict},
    }
    model_id = registry.store(
        engine,
        MODEL_TYPE,
        version,
        bundle.to_text(),
        ARTIFACT_FORMAT,
        data,
        metrics,
        activate=promoted,
        now=now,
    )
    say(f"{version}: {'promoted' if promoted else 'kept, not promoted'} ({verdict})")
    return SuccessModelReport(
        model_id=model_id,
        version=version,
        promoted=promoted,
        verdict=verdict,
        challenger=challenger,
        champion=champion,
        champion_id=champion_id,
        data=data,
    )


class ActiveSuccessModel:
    """The champion in force: the registry's active success model on top of `prior`, else the
    prior alone. `refresh` (the engine calls it before each decision; one indexed query) follows
    a promotion or a rollback without a worker restart. A model that cannot be loaded is logged
    and skipped — decisions go on with the prior — until another one is made active."""

    def __init__(self, engine: Engine, prior: SuccessModel) -> None:
        self._engine = engine
        self.prior = prior
        self._active_id: str | None = None
        self._model: LearnedSuccessModel | None = None

    @property
    def version(self) -> str:
        return self._model.version if self._model else "beta-prior"

    def refresh(self) -> None:
        wanted = registry.active_id(self._engine, MODEL_TYPE)
        if wanted == self._active_id:
            return
        self._active_id = wanted
        if wanted is None:
            self._model = None
            return
        try:
            self._model = load_model(self._engine, wanted, self.prior)
        except (registry.RegistryError, ValueError, KeyError) as err:
            log.warning(
                "success model not loaded, deciding on the prior", model_id=wanted, error=str(err)
            )
            self._model = None
        else:
            log.info("success model in force", model_id=wanted, version=self._model.version)

    def estimate(self, context: DecisionContext, candidate: Candidate) -> SuccessEstimate:
        return (self._model or self.prior).estimate(context, candidate)

    def explain(
        self, context: DecisionContext, candidate: Candidate, top: int = 5
    ) -> list[tuple[str, float]]:
        """The learned model's largest contributions; none while the prior is in force."""
        return self._model.explain(context, candidate, top) if self._model else []
