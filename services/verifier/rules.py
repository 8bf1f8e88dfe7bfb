"""Rules that catch what the cross-encoder misses.

A small cross-encoder reads "enable" and "disable", or "Python 3.8" and "Python 3.12", as
nearly the same text, and a cache that serves the other one's answer is wrong in the worst
way. These rules look for exactly those differences between the query and a cached
candidate. Each can only LOWER a score (never raise it: a rule cannot make two different
questions the same), and each is switched off by its own setting (REFLEX_RULE_*), so the
eval can measure it with and without.

The verifier service calls ``apply_rules`` after the model, once per query with its
candidates. Pure functions of the text: no state, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reflex.settings import RuleSettings

# A fired rule multiplies the score by this. 0.25 takes any score below the thresholds a
# cache would use (0.5 and up) while keeping the order of candidates, which the caller may log.
PENALTY = 0.25

_WORD = re.compile(r"[a-z0-9][a-z0-9'’+#.\-]*")
_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "fifteen": "15", "twenty": "20",
    "thirty": "30", "forty": "40", "fifty": "50", "hundred": "100", "thousand": "1000",
}
_NUMBER = re.compile(r"(?<![a-z])\d+(?:[.,]\d+)*")

# "n't" forms are matched by suffix; these are the stand-alone negators.
_NEGATORS = {"not", "no", "never", "cannot", "without", "nothing", "none", "neither", "nor"}

# Opposites that flip what a question asks. Each side lists the forms to match (inflections
# spelled out: a stemmer would also merge words we want kept apart).
_ANTONYMS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("enable", "enables", "enabled", "enabling"), ("disable", "disables", "disabled", "disabling")),
    (("ascending", "asc", "increasing"), ("descending", "desc", "decreasing")),
    (("add", "adds", "added", "adding"), ("remove", "removes", "removed", "removing", "delete", "deleting")),
    (("keep", "keeps", "keeping", "kept"), ("discard", "discards", "discarding", "discarded")),
    (("include", "includes", "including", "included"), ("exclude", "excludes", "excluding", "excluded")),
    (("before",), ("after",)),
    (("increase", "increases", "increasing", "increased"), ("decrease", "decreases", "decreasing", "decreased")),
    (("show", "shows", "showing", "shown"), ("hide", "hides", "hiding", "hidden")),
    (("lock", "locks", "locking", "locked"), ("unlock", "unlocks", "unlocking", "unlocked")),
    (("encrypt", "encrypts", "encrypting", "encrypted", "encryption"),
     ("decrypt", "decrypts", "decrypting", "decrypted", "decryption")),
    (("encode", "encodes", "encoding", "encoded"), ("decode", "decodes", "decoding", "decoded")),
    (("compress", "compressing", "compressed", "compression"), ("decompress", "decompressing", "decompressed")),
    (("zip", "zipping"), ("unzip", "unzipping")),
    (("serialize", "serializing", "serialization"), ("deserialize", "deserializing", "deserialization")),
    (("install", "installing", "installed"), ("uninstall", "uninstalling", "uninstalled")),
    (("mount", "mounting"), ("unmount", "unmounting")),
    (("upload", "uploading", "uploaded"), ("download", "downloading", "downloaded")),
    (("import", "importing"), ("export", "exporting")),
    (("push", "pushing"), ("pull", "pulling")),
    (("subscribe", "subscribing"), ("unsubscribe", "unsubscribing")),
    (("connect", "connecting"), ("disconnect", "disconnecting")),
    (("allow", "allowing", "allowed"), ("block", "blocking", "blocked", "deny", "denying")),
    (("open", "opening"), ("close", "closing")),
    (("start", "starting"), ("stop", "stopping")),
    (("min", "minimum", "smallest", "lowest"), ("max", "maximum", "largest", "highest")),
    (("first",), ("last",)),
    (("uppercase", "upper"), ("lowercase", "lower")),
    (("read", "reading"), ("write", "writing")),
    (("public",), ("private",)),
    (("local", "locally"), ("remote", "globally", "global")),
    (("deep",), ("shallow",)),
    (("absolute",), ("relative",)),
    (("synchronous", "synchronously", "sync"), ("asynchronous", "asynchronously", "async")),
    (("horizontal", "horizontally"), ("vertical", "vertically")),
    (("top",), ("bottom",)),
    (("with",), ("without",)),
    (("gain", "gaining"), ("lose", "losing")),
    (("buy", "buying"), ("sell", "selling")),
    (("cheap", "cheapest", "cheaper"), ("expensive", "priciest", "costlier")),
    (("safe", "safely"), ("unsafe", "dangerous")),
    (("possible",), ("impossible",)),
    (("legal",), ("illegal",)),
    (("valid",), ("invalid",)),
    (("inner",), ("outer",)),
    (("up", "upward", "upwards"), ("down", "downward", "downwards")),
    (("on",), ("off",)),
)
_ANTONYM_OF: dict[str, frozenset[str]] = {}
for _left, _right in _ANTONYMS:
    for _w in _left:
        _ANTONYM_OF[_w] = _ANTONYM_OF.get(_w, frozenset()) | frozenset(_right)
    for _w in _right:
        _ANTONYM_OF[_w] = _ANTONYM_OF.get(_w, frozenset()) | frozenset(_left)


# Named things of one kind that different answers depend on. Aliases map to one canonical
# name. Words that are also common English ("go", "r", "swift", "spring", "express", "edge",
# "safari") are left out: a false alarm here costs a hit on an unrelated sentence.
_ENTITY_KINDS: dict[str, dict[str, str]] = {
    "language": {
        "python": "python", "py": "python", "javascript": "javascript", "js": "javascript", "typescript": "typescript",
        "ts": "typescript", "rust": "rust", "golang": "go", "java": "java", "c++": "c++", "cpp": "c++", "c#": "c#",
        "csharp": "c#", "ruby": "ruby", "php": "php", "kotlin": "kotlin", "scala": "scala", "elixir": "elixir",
        "haskell": "haskell", "perl": "perl", "lua": "lua", "dart": "dart", "bash": "bash", "powershell": "powershell",
        "matlab": "matlab", "julia": "julia", "fortran": "fortran", "cobol": "cobol", "objective-c": "objective-c",
    },
    "framework": {
        "react": "react", "reactjs": "react", "vue": "vue", "vue.js": "vue", "vuejs": "vue", "angular": "angular",
        "angularjs": "angular", "svelte": "svelte", "jquery": "jquery", "django": "django", "flask": "flask",
        "fastapi": "fastapi", "rails": "rails", "laravel": "laravel", "pandas": "pandas", "polars": "polars",
        "pytorch": "pytorch", "torch": "pytorch", "tensorflow": "tensorflow", "keras": "keras", "jax": "jax",
        "numpy": "numpy", "next.js": "next.js", "nextjs": "next.js", "nuxt": "nuxt",
    },
    "os": {
        "windows": "windows", "macos": "macos", "osx": "macos", "linux": "linux", "ubuntu": "ubuntu",
        "debian": "debian", "fedora": "fedora", "centos": "centos", "android": "android", "ios": "ios",
        "iphone": "ios", "ipad": "ios",
    },
    "database": {
        "postgresql": "postgresql", "postgres": "postgresql", "mysql": "mysql", "sqlite": "sqlite",
        "mongodb": "mongodb", "mongo": "mongodb", "redis": "redis", "cassandra": "cassandra", "dynamodb": "dynamodb",
        "oracle": "oracle", "mssql": "mssql", "mariadb": "mariadb", "elasticsearch": "elasticsearch",
    },
    "cloud": {"aws": "aws", "gcp": "gcp", "azure": "azure"},
    "tool": {
        "npm": "npm", "yarn": "yarn", "pnpm": "pnpm", "pip": "pip", "conda": "conda", "poetry": "poetry",
        "docker": "docker", "podman": "podman", "git": "git", "svn": "svn", "mercurial": "mercurial",
        "vim": "vim", "emacs": "emacs", "vscode": "vscode", "pycharm": "pycharm", "intellij": "intellij",
        "chrome": "chrome", "firefox": "firefox",
    },
}


def _entities(text: str) -> dict[str, frozenset[str]]:
    words = _words(text)
    return {kind: frozenset(names[w] for w in words if w in names) for kind, names in _ENTITY_KINDS.items()}


def entities_differ(query: str, candidate: str) -> bool:
    """Both name a language / framework / OS / database / cloud / tool, and not the same ones
    ("Python quicksort" / "Rust quicksort"). One side naming none is not enough."""
    q, c = _entities(query), _entities(candidate)
    return any(q[kind] and c[kind] and q[kind] != c[kind] for kind in _ENTITY_KINDS)


def _words(text: str) -> list[str]:
    return [w.strip(".'’-") for w in _WORD.findall(text.lower().replace("’", "'"))]


def numbers(text: str) -> frozenset[str]:
    """Numbers and versions in ``text``, with number words as digits ("two" -> "2")."""
    lowered = text.lower()
    found = {n.replace(",", "") for n in _NUMBER.findall(lowered)}
    found |= {_NUMBER_WORDS[w] for w in _words(lowered) if w in _NUMBER_WORDS}
    return frozenset(found)


def numbers_differ(query: str, candidate: str) -> bool:
    """Both name numbers (or versions, dates, amounts) and they are not the same ones.

    One side without any number is not enough: "sort a list in Python 3" and "sort a list in
    Python" usually want the same answer, and paraphrases often drop an incidental number."""
    q, c = numbers(query), numbers(candidate)
    return bool(q) and bool(c) and q != c


def _negated(text: str) -> bool:
    return any(w in _NEGATORS or w.endswith("n't") for w in _words(text))


def negation_differs(query: str, candidate: str) -> bool:
    """Exactly one of the two is negated ("not", "never", "without", "-n't", ...)."""
    return _negated(query) != _negated(candidate)


def antonyms_differ(query: str, candidate: str) -> bool:
    """One side uses a word whose opposite the other side uses instead ("enable" / "disable").

    Only words that the other side lacks count, so "add and remove items" vs "remove and add
    items" does not fire."""
    q, c = set(_words(query)), set(_words(candidate))
    only_q, only_c = q - c, c - q
    return any(_ANTONYM_OF.get(w, frozenset()) & only_c for w in only_q)


@dataclass(frozen=True)
class Rule:
    name: str  # also the RuleSettings field (REFLEX_RULE_<NAME>) that enables it
    fires: Callable[[str, str], bool]


RULES: tuple[Rule, ...] = (
    Rule("numbers", numbers_differ),
    Rule("negation", negation_differs),
    Rule("antonyms", antonyms_differ),
    Rule("entities", entities_differ),
)


def enabled_rules(settings: RuleSettings) -> list[str]:
    return [r.name for r in RULES if getattr(settings, r.name)]


def apply_rules(query: str, candidates: Sequence[str], scores: Sequence[float], settings: RuleSettings) -> list[float]:
    """Return the scores after the enabled rules (each can only lower a score)."""
    active = [r for r in RULES if getattr(settings, r.name)]
    out: list[float] = []
    for candidate, score in zip(candidates, scores, strict=True):
        fired = sum(rule.fires(query, candidate) for rule in active)
        out.append(float(score) * PENALTY**fired if fired else float(score))
    return out
