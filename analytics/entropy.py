"""The entropy weight method (熵值法) and the composite indices built with it.

For m objects (counties, or county-years when pooled) and n indicators:

1. normalise by direction, min-max:  x'_ij = (x_ij - min_j) / (max_j - min_j)  for higher_is_better,
   x'_ij = (max_j - x_ij) / (max_j - min_j)  for lower_is_better; then shift: z_ij = x'_ij + SHIFT,
   so that no proportion is zero and no log of zero is taken (SHIFT = 0.0001 by default, the value
   most of the Chinese literature uses; 0.01 is the other common choice);
2. proportions  p_ij = z_ij / sum_i z_ij;
3. entropy  e_j = -k sum_i p_ij ln p_ij  with k = 1 / ln m  (0 <= e_j <= 1);
4. divergence  d_j = 1 - e_j;
5. weights  w_j = d_j / sum_j d_j  (they sum to 1);
6. scores  s_i = SCALE * sum_j w_j z_ij  with SCALE = 100: the shifted normalised values are used,
   as in the proportions, so every score is positive (ln(score) is defined for the panel models)
   and lies in [100 * SHIFT, 100 * (1 + SHIFT)].

A constant indicator (zero range over the objects) carries no information: its normalised values
are 0 (z = SHIFT), its proportions 1/m, its entropy 1 and its weight 0; it is listed in `constant`.
When no indicator varies at all the weights are undefined and a ValueError is raised.

Pooling over years ("panel entropy"): pass rows indexed by (county, year); every county-year is one
object, so weights are common to all years and scores compare across time.

Composite indices follow the catalogue's dimensions. `flat` (what the source study did: its weights
are global and sum to 1 over all indicators) weighs all members in one entropy step; a dimension's
weight is the sum of its members' weights. `hierarchical` weighs members within each dimension,
then the dimensions by the entropy of their dimension scores. In both, a dimension score is the
dimension's own 0..100 index (its members' weighted mean) and the overall score is
sum_k W_k * D_ik.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from analytics.catalogue import Catalogue, CompositeIndex, Direction, get_catalogue
from analytics.results import Result, Table, jsonable

DEFAULT_SHIFT = 0.0001
DEFAULT_SCALE = 100.0
_DIRECTION_ALIASES: dict[str, Direction] = {
    "higher_is_better": "higher_is_better",
    "lower_is_better": "lower_is_better",
    "+": "higher_is_better",
    "-": "lower_is_better",
    "positive": "higher_is_better",
    "negative": "lower_is_better",
}


def _direction(value: str) -> Direction:
    try:
        return _DIRECTION_ALIASES[value]
    except KeyError:
        raise ValueError(f"unknown direction {value!r}; use higher_is_better or lower_is_better") from None


def _object_label(key: Any) -> str:
    return "/".join(str(k) for k in key) if isinstance(key, tuple) else str(key)


def _check_matrix(data: pd.DataFrame) -> None:
    if data.shape[0] < 2:
        raise ValueError(f"the entropy method needs at least 2 objects, got {data.shape[0]}")
    if data.shape[1] < 1:
        raise ValueError("no indicators given")
    values = data.to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        where = [f"{_object_label(data.index[i])}: {data.columns[j]}" for i, j in zip(*np.nonzero(bad), strict=True)][
            :10
        ]
        more = f" (and {int(bad.sum()) - len(where)} more)" if bad.sum() > len(where) else ""
        raise ValueError(f"missing or non-finite values: {'; '.join(where)}{more}")


@dataclass
class EntropyResult(Result):
    """Weights and scores of one entropy computation, with every intermediate step kept."""

    directions: dict[str, Direction]
    normalized: pd.DataFrame  # z = x' + shift
    proportions: pd.DataFrame
    entropy: pd.Series
    divergence: pd.Series
    weights: pd.Series
    scores: pd.Series
    constant: list[str]
    shift: float
    scale: float

    @property
    def m(self) -> int:
        return int(self.normalized.shape[0])

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "direction": pd.Series(self.directions),
                "entropy": self.entropy,
                "divergence": self.divergence,
                "weight": self.weights,
            }
        ).loc[list(self.weights.index)]

    def tables(self) -> list[Table]:
        rows = [
            [ind, "+" if r["direction"] == "higher_is_better" else "-", r["entropy"], r["divergence"], r["weight"]]
            for ind, r in self.table().iterrows()
        ]
        rows.append(["Sum", "", None, float(self.divergence.sum()), float(self.weights.sum())])
        weights = Table(
            ["Indicator", "Attr", "Entropy e", "Divergence d", "Weight w"],
            rows,
            title=f"Entropy weights (m = {self.m} objects, shift = {self.shift:g})",
            notes=[f"constant (weight 0): {', '.join(self.constant)}"] if self.constant else [],
        )
        ranked = self.scores.sort_values(ascending=False)
        score_rows = [[_object_label(k), i + 1, v] for i, (k, v) in enumerate(ranked.items())]
        scores = Table(["Object", "Rank", f"Score (0-{self.scale:g})"], score_rows, title="Scores")
        return [weights, scores]

    def to_dict(self) -> dict[str, Any]:
        names = [n or f"level_{i}" for i, n in enumerate(self.scores.index.names)]
        scores = []
        for key, value in self.scores.items():
            keys = key if isinstance(key, tuple) else (key,)
            scores.append({**dict(zip(names, keys, strict=True)), "score": value})
        return jsonable(
            {
                "method": "entropy",
                "m": self.m,
                "shift": self.shift,
                "scale": self.scale,
                "indicators": [{"indicator": ind, **r.to_dict()} for ind, r in self.table().iterrows()],
                "constant": self.constant,
                "scores": scores,
            }
        )


def normalize(
    data: pd.DataFrame, directions: Mapping[str, str] | None = None, *, shift: float = DEFAULT_SHIFT
) -> tuple[pd.DataFrame, list[str]]:
    """Min-max normalisation by direction plus `shift`; returns (z, constant columns)."""
    if shift < 0:
        raise ValueError(f"shift must be >= 0, got {shift}")
    dirs = _directions(data, directions)
    x = data.to_numpy(dtype=float)
    lo, hi = x.min(axis=0), x.max(axis=0)
    span = hi - lo
    constant = span <= 1e-12 * np.maximum(np.abs(hi), 1.0)
    safe = np.where(constant, 1.0, span)
    positive = np.array([dirs[c] == "higher_is_better" for c in data.columns])
    xn = np.where(positive, (x - lo) / safe, (hi - x) / safe)
    xn[:, constant] = 0.0
    z = pd.DataFrame(xn + shift, index=data.index, columns=data.columns)
    return z, [str(c) for c, flag in zip(data.columns, constant, strict=True) if flag]


def _directions(data: pd.DataFrame, directions: Mapping[str, str] | None) -> dict[str, Direction]:
    if directions is None:
        return {str(c): "higher_is_better" for c in data.columns}
    missing = [str(c) for c in data.columns if c not in directions]
    if missing:
        raise KeyError(f"no direction for indicator(s): {', '.join(missing)}")
    return {str(c): _direction(directions[c]) for c in data.columns}


def entropy_weights(
    data: pd.DataFrame,
    directions: Mapping[str, str] | None = None,
    *,
    shift: float = DEFAULT_SHIFT,
    scale: float = DEFAULT_SCALE,
    no_variation: Literal["raise", "equal"] = "raise",
) -> EntropyResult:
    """Entropy weights of the columns of `data` (rows = objects) and the objects' scores.

    `directions` maps each column to higher_is_better / lower_is_better (or '+' / '-'); all are
    higher_is_better when omitted. `no_variation="equal"` gives equal weights instead of raising
    when no column varies (used inside a dimension of a hierarchical index).
    """
    _check_matrix(data)
    dirs = _directions(data, directions)
    z, constant = normalize(data, dirs, shift=shift)
    zv = z.to_numpy()
    m = zv.shape[0]
    col_sums = zv.sum(axis=0)
    p = np.divide(zv, col_sums, out=np.full_like(zv, 1.0 / m), where=col_sums > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)  # 0 ln 0 = 0 (only reachable with shift = 0)
    e = -plogp.sum(axis=0) / np.log(m)
    e = np.clip(e, 0.0, 1.0)
    d = 1.0 - e
    total = d.sum()
    if total <= 1e-15:
        if no_variation == "raise":
            raise ValueError("no indicator varies across the objects: the entropy weights are undefined")
        w = np.full(d.shape, 1.0 / d.size)
    else:
        w = d / total
    cols = data.columns
    scores = pd.Series(scale * zv @ w, index=data.index, name="score")
    return EntropyResult(
        directions=dirs,
        normalized=z,
        proportions=pd.DataFrame(p, index=data.index, columns=cols),
        entropy=pd.Series(e, index=cols, name="entropy"),
        divergence=pd.Series(d, index=cols, name="divergence"),
        weights=pd.Series(w, index=cols, name="weight"),
        scores=scores,
        constant=constant,
        shift=shift,
        scale=scale,
    )


# ---------------------------------------------------------------- composite indices


@dataclass
class CompositeResult(Result):
    """A composite index: member and dimension weights, overall and dimension scores."""

    index_id: str
    name_zh: str
    name_en: str
    method: Literal["flat", "hierarchical"]
    weights: pd.DataFrame  # one row per member: dimension, variable, direction, entropy, divergence, ...
    dimension_weights: pd.Series
    scores: pd.Series
    dimension_scores: pd.DataFrame
    shift: float
    scale: float
    constant: list[str] = field(default_factory=list)
    published_source: str | None = None
    published_weight_sum: float | None = None

    @property
    def m(self) -> int:
        return int(self.scores.shape[0])

    def tables(self) -> list[Table]:
        has_published = self.weights["published_weight"].notna().any()
        headers = ["Dimension / indicator", "Attr", "Entropy e", "Divergence d", "Weight w", "w in dim."]
        if has_published:
            headers.append("Published w")
        rows: list[list[Any]] = []
        for dim, group in self.weights.groupby("dimension", sort=False):
            dim_row: list[Any] = [str(dim), "", None, None, float(self.dimension_weights[dim]), None]
            if has_published:
                pub = group["published_weight"].dropna()
                dim_row.append(float(pub.sum()) if len(pub) else None)
            rows.append(dim_row)
            for _, r in group.iterrows():
                row: list[Any] = [
                    f"  {r['variable']}",
                    "+" if r["direction"] == "higher_is_better" else "-",
                    r["entropy"],
                    r["divergence"],
                    r["weight"],
                    r["weight_in_dimension"],
                ]
                if has_published:
                    row.append(r["published_weight"])
                rows.append(row)
        total: list[Any] = ["Sum", "", None, None, float(self.weights["weight"].sum()), None]
        if has_published:
            total.append(self.published_weight_sum)
        rows.append(total)
        notes = [
            f"{self.method} entropy over m = {self.m} objects; shift = {self.shift:g}; "
            f"scores on 0-{self.scale:g} (shifted normalised values)"
        ]
        if self.constant:
            notes.append(f"constant over the objects (weight 0): {', '.join(self.constant)}")
        if has_published:
            notes.append(
                f"published weights: {self.published_source}; they sum to {self.published_weight_sum:g} as printed"
            )
        weights = Table(headers, rows, title=f"{self.name_en} ({self.name_zh}): weights", notes=notes)
        ranked = self.scores.sort_values(ascending=False)
        dims = list(self.dimension_weights.index)
        score_rows = [
            [_object_label(k), i + 1, v, *(self.dimension_scores.loc[k, d] for d in dims)]
            for i, (k, v) in enumerate(ranked.items())
        ]
        scores = Table(
            ["Object", "Rank", self.index_id.upper(), *dims], score_rows, title=f"{self.name_en}: scores", digits=2
        )
        return [weights, scores]

    def to_dict(self) -> dict[str, Any]:
        names = [n or f"level_{i}" for i, n in enumerate(self.scores.index.names)]
        scores = []
        for key, value in self.scores.items():
            keys = key if isinstance(key, tuple) else (key,)
            scores.append(
                {
                    **dict(zip(names, keys, strict=True)),
                    "score": value,
                    "dimensions": self.dimension_scores.loc[key].to_dict(),
                }
            )
        return jsonable(
            {
                "model": "composite_index",
                "index": self.index_id,
                "name_zh": self.name_zh,
                "name_en": self.name_en,
                "method": self.method,
                "m": self.m,
                "shift": self.shift,
                "scale": self.scale,
                "weights": [{"indicator": ind, **r.to_dict()} for ind, r in self.weights.iterrows()],
                "dimension_weights": self.dimension_weights.to_dict(),
                "constant": self.constant,
                "published_source": self.published_source,
                "published_weight_sum": self.published_weight_sum,
                "scores": scores,
            }
        )


def member_matrix(data: pd.DataFrame, index: CompositeIndex) -> pd.DataFrame:
    """The members of `index` from raw indicator columns, log-transformed where the catalogue says so.

    Raises KeyError for absent indicators and ValueError for missing or non-positive (logged) values.
    """
    missing = [m.indicator for m in index.members if m.indicator not in data.columns]
    if missing:
        raise KeyError(f"index {index.id!r}: no data for indicator(s) {', '.join(missing)}")
    out = {}
    for m in index.members:
        values = data[m.indicator].astype(float)
        if m.transform == "ln":
            bad = values[values <= 0]
            if len(bad):
                where = ", ".join(_object_label(k) for k in bad.index[:5])
                raise ValueError(f"index {index.id!r}: ln of {m.indicator} needs values > 0 (not at {where})")
            values = np.log(values)
        out[m.variable] = values
    frame = pd.DataFrame(out, index=data.index)
    incomplete = frame[frame.isna().any(axis=1)]
    if len(incomplete):
        where = "; ".join(
            f"{_object_label(k)}: {', '.join(c for c in frame.columns if pd.isna(r[c]))}"
            for k, r in incomplete.head(5).iterrows()
        )
        more = f" (and {len(incomplete) - 5} more rows)" if len(incomplete) > 5 else ""
        raise ValueError(f"index {index.id!r}: missing values for {where}{more}")
    return frame


def composite_index(
    data: pd.DataFrame,
    index: CompositeIndex | str,
    *,
    catalogue: Catalogue | None = None,
    method: Literal["flat", "hierarchical"] = "flat",
    shift: float = DEFAULT_SHIFT,
    scale: float = DEFAULT_SCALE,
) -> CompositeResult:
    """Compute a catalogue composite index over the rows of `data` (raw indicator columns).

    Rows are the objects compared: counties of one year, or (county, year) pairs for a pooled
    panel index whose scores compare across years.
    """
    catalogue = catalogue or get_catalogue()
    idx = catalogue.index(index) if isinstance(index, str) else index
    x = member_matrix(data, idx)
    directions = {m.variable: catalogue.indicator(m.indicator).direction for m in idx.members}
    dim_of = {m.variable: d.id for d in idx.dimensions for m in d.members}
    members_of: dict[str, list[str]] = {d.id: [m.variable for m in d.members] for d in idx.dimensions}
    published = {m.variable: m.published_weight for m in idx.members}
    if method == "flat":
        res = entropy_weights(x, directions, shift=shift, scale=scale)
        weights = res.weights
        entropy, divergence, constant = res.entropy, res.divergence, res.constant
        dim_w = pd.Series({d: float(weights[v].sum()) for d, v in members_of.items()}, name="weight")
        within = pd.Series({v: (weights[v] / dim_w[dim_of[v]] if dim_w[dim_of[v]] > 0 else 0.0) for v in weights.index})
        dim_scores = pd.DataFrame(
            {d: scale * (res.normalized[v] * within[v]).sum(axis=1) for d, v in members_of.items()}
        )
        scores = res.scores
    elif method == "hierarchical":
        stage1 = {
            d: entropy_weights(x[v], directions, shift=shift, scale=1.0, no_variation="equal")
            for d, v in members_of.items()
        }
        sub = pd.DataFrame({d: r.scores for d, r in stage1.items()})
        stage2 = entropy_weights(sub, None, shift=shift, scale=1.0, no_variation="raise")
        dim_w = stage2.weights.rename("weight")
        within = pd.concat([r.weights for r in stage1.values()])
        weights = pd.Series({v: dim_w[dim_of[v]] * within[v] for v in within.index}, name="weight")
        entropy = pd.concat([r.entropy for r in stage1.values()])
        divergence = pd.concat([r.divergence for r in stage1.values()])
        constant = [c for r in stage1.values() for c in r.constant] + [f"dimension {c}" for c in stage2.constant]
        dim_scores = scale * sub
        scores = pd.Series(dim_scores.to_numpy() @ dim_w.to_numpy(), index=x.index, name="score")
    else:
        raise ValueError(f"unknown method {method!r}; use flat or hierarchical")
    table = pd.DataFrame(
        {
            "dimension": pd.Series(dim_of),
            "variable": pd.Series({v: v for v in x.columns}),
            "direction": pd.Series(directions),
            "entropy": entropy,
            "divergence": divergence,
            "weight": weights,
            "weight_in_dimension": within,
            "published_weight": pd.Series(published, dtype=float),
        }
    ).loc[list(x.columns)]
    table.index = pd.Index([m.indicator for m in idx.members], name="indicator")
    return CompositeResult(
        index_id=idx.id,
        name_zh=idx.name_zh,
        name_en=idx.name_en,
        method=method,
        weights=table,
        dimension_weights=dim_w,
        scores=scores.rename(idx.id),
        dimension_scores=dim_scores,
        shift=shift,
        scale=scale,
        constant=constant,
        published_source=idx.published.source if idx.published else None,
        published_weight_sum=idx.published_weight_sum(),
    )


def scores_by_year(
    data: pd.DataFrame, index: CompositeIndex | str, *, year_level: str = "year", **kwargs: Any
) -> dict[int, CompositeResult]:
    """The index computed separately for each year (cross-section weights), keyed by year."""
    years = sorted(data.index.get_level_values(year_level).unique())
    return {int(y): composite_index(data.xs(y, level=year_level), index, **kwargs) for y in years}


def compare_weights(result: CompositeResult) -> pd.DataFrame:
    """Our weights beside the published ones (where the catalogue has them) and the difference."""
    t = result.weights[["dimension", "weight", "published_weight"]].copy()
    t["difference"] = t["weight"] - t["published_weight"]
    return t


def rank(scores: pd.Series, ascending: bool = False) -> pd.Series:
    return scores.rank(ascending=ascending, method="min").astype(int)
