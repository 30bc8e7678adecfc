"""Stage 6: rule filters — datatrove's Gopher quality/repetition, C4 and FineWeb filters, per language.

datatrove builds each filter for one language; documents here carry their own `metadata["language"]`,
so `RuleFilter` keeps one datatrove filter per language (shared parameters plus per-language
overrides) and hands each a `FastWordTokenizer` instead of spaCy.
"""

from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.base_filter import BaseFilter

from data_pipeline.text import FastWordTokenizer

FILTERS = {
    "gopher_quality": GopherQualityFilter,
    "gopher_repetition": GopherRepetitionFilter,
    "c4": C4QualityFilter,
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
        result = self._filter_for(doc.metadata.get("language", "en")).filter(doc)
        if result is True or result is False:
            return result or (False, self.kind)
        reason = result[1]
        family = self.kind.split("_")[0]  # datatrove's Gopher reasons already start with "gopher_"
        return False, reason if reason.startswith(family) else f"{self.kind}_{reason}"
