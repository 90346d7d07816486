"""Ranked candidates for a Patient: block, compare, weigh, grade.

``Matcher(index, weights).match(features)`` looks the Patient's blocking keys up in the candidate
index (``hub.mpi.candidates``), compares it with every candidate, and returns
``Candidate``s best first: match weight (bits), score (posterior probability 0..1), grade
(``certain`` | ``probable`` | ``possible``, from the configured thresholds; ``certainly-not`` when
a veto holds), per-field evidence ``{field: {"level", "weight"}}`` and the vetoes. ``decision``
turns a ranking into what the identity service records: ``link`` (certain candidates: linked
automatically), ``review`` (probable ones: the review queue) or ``new``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from rapidfuzz.distance import OSA

from hub.mpi import blocking
from hub.mpi.compare import (
    NEAR_BIRTH,
    compare,
    count_terms,
    given_apart,
    id_status,
    latin_parts,
    lettered_apart,
    numbered_apart,
    same_given,
)
from hub.mpi.weights import Weights

CERTAINLY_NOT = "certainly-not"
TWIN_BIRTH = ("exact", *NEAR_BIRTH, "typo")  # the same birth date, or one of them mistyped


@dataclass(slots=True)
class Candidate:
    ref: str
    weight: float
    score: float
    grade: str | None
    evidence: dict[str, dict[str, Any]] = field(default_factory=dict)
    vetoes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "weight": round(self.weight, 3), "score": round(self.score, 6),
                "grade": self.grade, "evidence": self.evidence, "vetoes": self.vetoes}


class Matcher:
    def __init__(self, index: Any, weights: Weights):
        self.index = index
        self.weights = weights

    def score(self, a: dict, b: dict, name_counts: dict[str, int], total: int,
              own: int = 2, counted: bool = True) -> Candidate:
        """Compare two Patients' features and weigh the evidence. ``own``: how many of the two
        the index counts (``b`` always; ``a`` once indexed), left out of a value's share;
        ``counted``: whether the index's counts of phones and addresses are complete."""
        levels, vetoes = compare(a, b)
        w = self.weights
        total_weight = w.prior_weight
        evidence: dict[str, dict[str, Any]] = {}
        shared = _shared_values(a, b, levels, name_counts, own)
        for fld, level in levels.items():
            if any(levels.get(other) == lv for other, lv in w.dependent.get(fld, ())):
                evidence[fld] = {"level": level, "weight": 0.0}  # said already (same household)
                continue
            share = None
            if fld == "name" and level == "exact" and total:
                share = w.name_share("exact", max(name_counts.get(a["name"], 0), 1), total)
            elif fld == "name" and level == "given" and total and counted:
                # an index whose counts are incomplete may hold too few of a given name: its
                # share, too small, would weigh above the level (uncapped, unlike a phone's)
                share = _given_share(a, b, name_counts, total, w)
            elif fld in shared and total:
                share = w.value_share(fld, shared[fld], total)
            x = w.weight(fld, level, share)
            total_weight += x
            evidence[fld] = {"level": level, "weight": round(x, 3)}
        twins = _twins(a, b, levels, w.twin_household)
        if w.twin_weight and twins:
            for fld in w.twin_silenced:
                if fld in evidence:
                    total_weight -= evidence[fld]["weight"]
                    evidence[fld]["weight"] = 0.0
            total_weight += w.twin_weight
            evidence["twin"] = {"level": "pattern", "weight": w.twin_weight}
        applied: list[tuple[frozenset, float]] = []
        # how common the name is: the more common of the two (a name in pinyin is rare in an
        # index of names in characters, the same name in characters may not be)
        held_by = max(name_counts.get(f["name"], 0) for f in (a, b) if f.get("name")) \
            if a.get("name") else 0
        for fields, cap, rare in w.combined:
            if rare and total and a.get("name") and w.name_share("exact", held_by, total) < rare:
                continue  # a rare name: strangers sharing it and the rest are rarer still
            # with the prior: a model retrained to a higher prior must not get round the bound;
            # with what a narrower bound already took off
            together = w.prior_weight + sum(evidence[f]["weight"] for f in fields if f in evidence) \
                + sum(cut for inner, cut in applied if inner <= set(fields))
            if together > cap:
                total_weight -= together - cap
                evidence["+".join(fields)] = {"level": "bounded", "weight": round(cap - together, 3)}
                applied.append((frozenset(fields), cap - together))
        p = w.probability(total_weight)
        grade = CERTAINLY_NOT if vetoes else w.grade(p)
        if grade == "certain":
            common = {f for f, others in shared.items() if not w.own_evidence(f, others)}
            held = hold(a, b, levels, twins, common)
            if held is None and not counted and hold(a, b, levels, twins, common | set(w.tf_values)):
                # the index counted phones and addresses only since some point (indexed before
                # they were counted): a clinic's switchboard may look rare, so no agreeing one
                # is anyone's own evidence until it is rebuilt
                held = "value-counts-incomplete"
            if held:  # a steward decides: never two people merged on weights alone
                return _held(Candidate(b["ref"], total_weight, p, grade, evidence, vetoes), held, w)
        return Candidate(b["ref"], total_weight, p, grade, evidence, vetoes)

    def match(self, f: dict, *, exclude: Iterable[str] = (), min_pk: int = 0,
              blocked: Callable[[str, str], bool] | None = None,
              keep_vetoed: bool = False) -> list[Candidate]:
        """Candidates of ``f`` graded at least ``possible`` (and vetoed ones with
        ``keep_vetoed``), best first. ``exclude``: refs left out (the Patient itself);
        ``min_pk``: only candidates indexed after this pk (a full re-match compares each pair
        once); ``blocked(a, b)``: pairs marked not-duplicate."""
        hashed = blocking.hashed(f)
        if not hashed:
            return []
        found, counts, total = self.index.lookup(hashed, count_terms(f))
        counted = self.index.counts_complete()
        # indexed itself (the incremental matcher indexes a Patient before matching it; $match
        # asks about one that isn't): then its own record is among a value's counted holders
        own = 2 if any(g["ref"] == f["ref"] for _, g in found) else 1
        skip = set(exclude)
        skip.add(f["ref"])
        scored: list[tuple[Candidate, dict]] = []
        for pk, g in found:
            if pk <= min_pk or g["ref"] in skip:
                continue
            if blocked is not None and blocked(f["ref"], g["ref"]):
                continue
            scored.append((self.score(f, g, counts, total, own, counted), g))
        self._hold_newborn_of_twins(f, scored, counts, total, counted)
        out = [c for c, _ in scored
               if c.grade is not None and (c.grade != CERTAINLY_NOT or keep_vetoed)]
        out.sort(key=lambda c: (c.grade == CERTAINLY_NOT, -c.weight, c.ref))
        return out

    def _hold_newborn_of_twins(self, f: dict, scored: list[tuple[Candidate, dict]],
                               counts: dict[str, int], total: int, counted: bool) -> None:
        """A newborn's placeholder (张丽之子) fits any child of its household born that day: when
        two such children are in sight, it is neither's without a steward. Linked to both, it
        would merge the twins; linked to one, it may be the other's record. Seen from either
        side: the placeholder certain for two children apart, or a child certain with a
        placeholder while its twin is among the candidates."""
        certain = [(c, g) for c, g in scored if c.grade == "certain"]
        if not certain:
            return
        if f.get("nb"):
            named = [(c, g) for c, g in certain if not g.get("nb")]
            if not any(_apart(self.score(x, y, counts, total, 2, counted))
                       for i, (_, x) in enumerate(named) for _, y in named[i + 1:]):
                return
            held = [c for c, _ in named]
        else:
            held = [c for c, g in certain if g.get("nb")]
            if not held or not any(_apart(c) for c, _ in scored):
                return
        for c in held:
            _held(c, "newborn-of-twins", self.weights)


def hold(a: dict, b: dict, levels: dict[str, str], twins: bool = False,
         common: Iterable[str] = ()) -> str | None:
    """Why two records the weights call certain go to review instead, or None. Evidence adds up
    in bits, and some disagreements no sum of agreements outweighs: an automatic link needs the
    names to agree, a person's own evidence (a valid identifier, a phone, an address) beyond a
    district, and nothing that marks two children of one household (``twins``: the twin pattern
    of ``_twins``). ``common``: the agreeing fields whose value more Patients carry than a
    household (a clinic's phone): no one's own evidence. Most are of Chinese names, in characters
    on at least one side (and newborn placeholders); two Latin-script names have their own
    (``_hold_latin``), and generational suffixes that disagree (Jr., Sr.) hold any."""
    common = set(common)
    name, birth = levels.get("name"), levels.get("birth")
    # a resident ID number is the person's own evidence only when both records' pass their check
    # (an identifier that fails its check digit is never a key: one a slip off a twin's valid
    # number linked the twins)
    same_id = levels.get("id") == "exact" and id_status(a) == id_status(b) == "valid"
    if a.get("nb") and b.get("nb") and (a.get("nbo") or "") != (b.get("nbo") or ""):
        return "newborns-apart"  # 之大女 and 之小女 under their mother's number: two children
    if a.get("mb") and b.get("mb") and a["mb"] != b["mb"]:
        return "newborns-apart"  # multipleBirthInteger 1 and 2: twins, whatever their names
    if a.get("nb") and b.get("nb") and not same_id and not a.get("nbo") and \
            not (a.get("mb") and a.get("mb") == b.get("mb")):
        # two placeholders without a birth order (张丽之子 twice) of one birth date and
        # household, on the mother's number (someone else's: no key) or none: unmarked twins as
        # often as one child twice (之大女 twice is one child: the mark says which)
        return "newborns-unmarked"
    baby, other = (a, b) if a.get("nb") else (b, a)
    if baby.get("nb") and not other.get("nb") and \
            (other.get("name") == baby.get("nbp") or levels.get("id") == "exact"):
        # a newborn registered as 张丽之女 (or 婴儿 on a number), on its mother's number and
        # phone and a birth date filled in from that number: nothing tells it from the mother
        # but the name it gives her (a newborn has rarely a number of its own yet)
        return "newborn-and-parent"
    if a.get("sfx") and b.get("sfx") and a["sfx"] != b["sfx"]:
        return "suffixes-differ"  # John Smith Sr. and John Smith Jr.: a father and a son
    names = [n for n in (a.get("name"), b.get("name")) if n]
    if names and all(n.isascii() for n in names):
        # the rules below are of Chinese names, which few surnames and common given names make
        # repeat far more than the weights' name frequencies assume (王伟, 张伟), and of the
        # region's habits (a parent's card for a child); Latin-script names (pinyin among them)
        # keep the rules of any script. A name in characters against one in pinyin (刘洋, Liu
        # Yang) is a Chinese name still, and as common
        return _hold_latin(a, b, levels, common, same_id)
    if twins and levels.get("id") in ("typo", "exact") and not same_given(a, b):
        # one household, one birth date, given names apart, and a number that carries the link:
        # one failing its check a digit off the other's (twins have neighbouring numbers), or
        # one number under two given names a character apart (one twin's card handed over for
        # the other); a steward decides. One given name mistyped (浩平 and 平, 乐 and 勒, 麦子颖
        # and Mai Zi) under one number or a slip of it is the same person far more often (on the
        # second noise model every such pair held was), and links
        return "twins"
    if name == "different" or (name == "similar" and given_apart(a, b)):
        # another name with one identifier (a borrowed card, a child on a parent's), or with a
        # birth date and a household (twins named apart, a nursing home, a default birth date
        # and a filler phone)
        return "names-differ"
    if (birth == "different" or generation_apart(a.get("bd"), b.get("bd"))) and not same_id:
        # a father and a son of one name and one home; born on one day of the year decades apart,
        # their dates are one digit of the year apart (1958, 1988) and read as a slip
        return "births-differ"
    if name == "pinyin" and birth in ("year1", "typo") and a["bd"][:4] != b["bd"][:4] and \
            not same_id and not any(n.isascii() for n in names) and \
            any(levels.get(f) in ("same", "exact") for f in ("phone", "addr", "hc")):
        # two given names in characters that sound alike (子涵, 梓涵) in one household, born in
        # other years: siblings named alike more often than one person twice mistyped (a name in
        # pinyin says nothing of its characters: a year's slip under it links as before)
        return "siblings"
    # a number a slip off the other's is the person's own only under the same name (twins,
    # whose numbers are neighbours, are held above)
    slip = levels.get("id") == "typo" and name in ("exact", "pinyin")
    if not (same_id or slip) and \
            not any(levels.get(f) in ("same", "exact") and f not in common
                    for f in ("phone", "addr", "hc")):
        # a name, a birth date and a district: namesakes in a city
        return "no-own-evidence"
    return None


def _hold_latin(a: dict, b: dict, levels: dict[str, str], common: set[str],
                same_id: bool) -> str | None:
    """``hold`` of two Latin-script names (pinyin among them): a generation apart, and a name and a
    birth date with nothing of the person's own. The person's own evidence is wider than for
    names in characters, as Latin-script data is written: an address line mistyped or its
    house number another or left out (FEBRL's noise), or the postal code (one mistyped with the
    locality agreeing) of Latin-script addresses without a district code: a suburb, not a district
    of a million people. Held otherwise, FEBRL4 lost most of its recall, every held pair a true one."""
    if generation_apart(a.get("bd"), b.get("bd")) and not same_id:
        return "births-differ"  # a father and a son: 1958 and 1988 are a generation, not a slip
    slip = levels.get("id") == "typo" and levels.get("name") in ("exact", "pinyin")
    if same_id or slip or levels.get("phone") == "same" and "phone" not in common or \
            levels.get("hc") == "exact" or levels.get("addr") == "exact" and "addr" not in common or \
            levels.get("addr") in ("similar", "street"):
        return None
    locality = levels.get("pc") == "same" or \
        levels.get("pc") == "typo" and levels.get("city") in ("same", "similar")
    if locality and a.get("aw") and b.get("aw") and not any(
            f.get(k) for f in (a, b) for k in ("dist", "dn")):
        return None
    return "no-own-evidence"  # a name, a birth date and a district: namesakes in a city


TWO_CHILDREN = ("twins", "newborns-apart", "newborns-unmarked")  # holds of two children of one birth
# holds whose kind says two people (not merely too little evidence: ``no-own-evidence``,
# ``value-counts-incomplete``): no third record unites such a pair in one Person
TWO_PEOPLE = (*TWO_CHILDREN, "newborn-of-twins", "newborn-and-parent", "names-differ",
              "births-differ", "siblings", "suffixes-differ")


def two_people(evidence: Any) -> bool:
    """Whether a candidate's evidence (``Candidate.evidence``, or a decision's entry for it with
    its ``fields``) carries a hold that says two people."""
    if isinstance(evidence, dict) and isinstance(evidence.get("fields"), dict):
        evidence = evidence["fields"]
    hold = evidence.get("hold") if isinstance(evidence, dict) else None
    return isinstance(hold, dict) and hold.get("level") in TWO_PEOPLE


def _apart(c: Candidate) -> bool:
    """Whether a compared pair is two children of one household and birth: the twin pattern, a
    hold that says so, or two valid ID numbers of one birth date."""
    return "twin" in c.evidence or c.evidence.get("hold", {}).get("level") in TWO_CHILDREN or \
        ("id_conflict" in c.vetoes and c.evidence.get("birth", {}).get("level") in TWIN_BIRTH)


def _held(c: Candidate, why: str, w: Weights) -> Candidate:
    """``c`` sent to a steward: probable, the hold in its evidence, and a score that agrees with
    the grade (below the threshold of certain)."""
    c.grade = "probable"
    c.evidence["hold"] = {"level": why, "weight": 0.0}
    c.score = max(w.thresholds["probable"], min(c.score, w.thresholds["certain"] - 1e-6))
    return c


def generation_apart(x: str | None, y: str | None) -> bool:
    """Two birth dates on the same day of the year, the years ten or more apart: a tens or
    hundreds digit of the year (1958, 1988) is a generation, not a slip, in one household."""
    if not x or not y or len(x) != 10 or len(y) != 10 or x[4:] != y[4:]:
        return False
    try:
        return abs(int(x[:4]) - int(y[:4])) >= 10
    except ValueError:
        return False


def _shared_values(a: dict, b: dict, levels: dict[str, str], counts: dict[str, int],
                   own: int) -> dict[str, int]:
    """{field: how many indexed Patients besides the two carry the value they agree on} for an
    agreeing phone (the rarest number they share) and identical address lines; a value the index
    never counted (built before phones and addresses were) is left out: it keeps the level's
    weight, and ``score`` takes it for no one's own evidence while the counts are incomplete."""
    out: dict[str, int] = {}
    if levels.get("phone") == "same":
        n = min(counts.get(f"ph:{p}", 0) for p in set(a["ph"]) & set(b["ph"]))
        if n > 0:
            out["phone"] = n - own
    if levels.get("addr") == "exact":
        n = counts.get(f"ad:{a['addr']}", 0)
        if n > 0:
            out["addr"] = n - own
    return out


def _given_share(a: dict, b: dict, counts: dict[str, int], total: int,
                 w: Weights) -> float | None:
    """The share of indexed Patients with the given name two Latin names have the same (their
    surnames differ), or None: the names only alike, or not counted (an index built before given
    names were counted says nothing about them)."""
    pa, pb = latin_parts(a), latin_parts(b)
    if not (pa and pb and pa[1] and pa[1] == pb[1]):
        return None
    n = counts.get(f"given:{pa[1]}", 0)
    return w.name_share("given", n, total) if n else None


def _twins(a: dict, b: dict, levels: dict[str, str], household: tuple[str, ...]) -> bool:
    """Same birth date and surname, another given name, and a household field in common."""
    if not (levels.get("birth") in TWIN_BIRTH and levels.get("name") in _twin_names(a)
            and bool(a.get("pyf")) and a.get("pyf") == b.get("pyf")
            and any(levels.get(f) in ("same", "exact") for f in household)):
        return False
    pa, pb = latin_parts(a), latin_parts(b)
    if pa and pb:  # a Latin given name two letters off is a typo, not a sibling (Baby 1, Baby 2,
        # Baby A, Baby B are)
        return numbered_apart(pa[1], pb[1]) or lettered_apart(a, b) or \
            OSA.distance(pa[1], pb[1], score_cutoff=3) > 2
    return True


def _twin_names(a: dict) -> tuple[str, ...]:
    # twins' Chinese given names often share a character (浩平, 平): a dropped character looks the same
    # (Latin script, pinyin too: "family", the surnames alike and the given names not)
    return ("family", "similar", "different") if (a.get("name") or "").isascii() else \
        ("partial", "similar", "different")


def decision(candidates: list[Candidate]) -> tuple[str, list[Candidate]]:
    """(``link`` | ``review`` | ``new``, the candidates it concerns) of a ranking."""
    certain = [c for c in candidates if c.grade == "certain"]
    if certain:
        return "link", certain
    probable = [c for c in candidates if c.grade == "probable"]
    if probable:
        return "review", probable
    return "new", []
