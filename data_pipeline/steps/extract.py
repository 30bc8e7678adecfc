"""Stage 2: HTML → main text with trafilatura (dots.llm1's choice) or resiliparse (several times faster)."""

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.extractors.base import ExtractorSandbox
from datatrove.pipeline.filters.base_filter import BaseFilter


def _trafilatura(html: str) -> str | None:
    import trafilatura

    return trafilatura.extract(html, include_comments=False, include_tables=False, deduplicate=False)


def _resiliparse(html: str) -> str | None:
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(html, main_content=True, alt_texts=False, links=False, list_bullets=True)


EXTRACTORS = {"trafilatura": _trafilatura, "resiliparse": _resiliparse}


class HtmlExtractor(BaseFilter):
    """Replaces the HTML of documents read from `html` fields or WARC records by their main text.

    A filter rather than datatrove's `BaseExtractor` because the latter drops failed or empty extractions
    without a record; here a non-HTML WARC response, a failed, timed-out or empty extraction is rejected
    with its reason. Extraction runs in datatrove's `ExtractorSandbox`: a child process killed after
    `timeout` seconds, so that pathological HTML cannot stall a task.
    """

    name = "🌐 HTML extraction"

    def __init__(self, extractor: str = "trafilatura", timeout: float = 5.0, exclusion_writer=None):
        super().__init__(exclusion_writer)
        if extractor not in EXTRACTORS:
            raise ValueError(f"extract.extractor={extractor!r}: expected one of {sorted(EXTRACTORS)}")
        self.extractor = extractor
        self.timeout = timeout
        self._sandbox = None

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        EXTRACTORS[self.extractor]("<p></p>")  # import it here: the sandbox's forked child starts warm
        with ExtractorSandbox(timeout=self.timeout) as self._sandbox:
            yield from super().run(data, rank, world_size)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if not doc.metadata.get("is_html"):
            return True
        content_type = doc.metadata.get("content_type")
        if content_type is not None and "html" not in content_type:
            return False, "not_html"
        with self.track_time():
            try:
                text = self._sandbox.process_document(doc.text, EXTRACTORS[self.extractor])
            except TimeoutError:
                return False, "extraction_timeout"
            except Exception:  # the extractor's own failure on this page (or its process dying)
                return False, "extraction_error"
        if not text or not text.strip():
            return False, "empty_extraction"
        self.stat_update("html_bytes", value=len(doc.text))
        self.stat_update("removed_chars_markup_and_boilerplate", value=len(doc.text) - len(text.strip()))
        doc.text = text.strip()
        doc.metadata["is_html"] = False
        return True
