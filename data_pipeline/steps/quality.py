"""Stage 6: rule filters — datatrove's Gopher quality/repetition, C4 and FineWeb filters, per language.

datatrove builds each filter for one language; documents here carry their own `metadata["language"]`,
so `RuleFilter` keeps one datatrove filter per language (shared parameters plus per-language
overrides) and hands each a `FastWordTokenizer` instead of spaCy. The C4 filter also edits the text
it keeps (it drops lines); `RuleFilter` counts the characters each of its rules removed.
"""

from collections import Counter

from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.filters.c4_filters import CITATION_REGEX

from data_pipeline.text import FastWordTokenizer


class C4LineFilter(C4QualityFilter):
    """datatrove's C4 filter, noting each line's outcome (the `line-*` stat it counts for it) to tell
    which rule removed which characters."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.outcomes: list[str] = []

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        self.outcomes = []
        return super().filter(doc)

    def stat_update(self, *labels: str, value: int = 1, unit: str = None) -> None:
        super().stat_update(*labels, value=value, unit=unit)
        self.outcomes += [label.removeprefix("line-filter-") for label in labels if label.startswith("line-")
                          and label != "line-total"]

    def removed_chars(self, before: str, after: str) -> Counter:
        """Characters of `before` that the last `filter` call removed, by rule: the dropped lines' under
        their rule's name, `citations`, and `whitespace` (line ends, blank lines, stripped spaces)."""
        if not self.split_paragraph:  # outcomes are per sentence, which do not add up to the text
            return Counter(sentence_rules=len(before) - len(after))
        removed = Counter()
        for line, outcome in zip(before.splitlines(), self.outcomes, strict=True):
            if outcome == "line-kept":
                if self.remove_citations:
                    removed["citations"] += len(line.strip()) - len(CITATION_REGEX.sub("", line.strip()))
            else:
                removed[outcome] += len(line)
        removed["whitespace"] = len(before) - len(after) - sum(removed.values())
        return removed


FILTERS = {
    "gopher_quality": GopherQualityFilter,
    "gopher_repetition": GopherRepetitionFilter,
    "c4": C4LineFilter,
    "fineweb": FineWebQualityFilter,
}


class RuleFilter(BaseFilter):
    """One of `FILTERS` with datatrove's defaults, updated by `params` then by `per_language[lang]`."""

    def __init__(self, kind: str, params: dict | None = None, per_language: dict | None = None, exclusion_writer=None):
        if kind not in FILTERS:
            raise ValueError(f"quality filter {kind!r}: expected one of {sorted(FILTERS)}")
        self.kind = kind
        self.name = f"📏 {kind}"
        super().__init__(exclusion_writer)
        self.params = dict(params or {})
        self.per_language = {lang: dict(p or {}) for lang, p in (per_language or {}).items()}
        self._filters = {}
        self._filter_for("en")  # fail at construction on a bad parameter name

    def _filter_for(self, language: str) -> BaseFilter:
        if language not in self._filters:
            params = {**self.params, **self.per_language.get(language, {})}
            try:
                self._filters[language] = FILTERS[self.kind](language=FastWordTokenizer(language), **params)
            except TypeError as e:
                raise ValueError(f"quality.{self.kind} parameters for {language!r}: {e}") from None
        return self._filters[language]

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text, rule_filter = doc.text, self._filter_for(doc.metadata.get("language", "en"))
        result = rule_filter.filter(doc)
        if result is True and doc.text != text:  # only the C4 filter edits text
            for reason, chars in rule_filter.removed_chars(text, doc.text).items():
                if chars:
                    self.stat_update(f"removed_chars_{reason}", value=chars)
        if result is True or result is False:
            return result or (False, self.kind)
        reason = result[1]
        family = self.kind.split("_")[0]  # datatrove's Gopher reasons already start with "gopher_"
        return False, reason if reason.startswith(family) else f"{self.kind}_{reason}"
