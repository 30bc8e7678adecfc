"""Stage 1: URL blocklist, datatrove's `URLFilter` (domain/URL lists and banned words) made offline."""

from datatrove.data import Document
from datatrove.pipeline.filters import URLFilter


class UrlBlocklistFilter(URLFilter):
    """datatrove's URLFilter with the bundled public-suffix snapshot; documents without a URL pass."""

    name = "🔗 URL blocklist"

    def __init__(self, **kwargs):
        from tldextract import TLDExtract

        super().__init__(**kwargs)
        self.tldextractor = TLDExtract(suffix_list_urls=())  # no download at run time

    def filter(self, document: Document) -> bool | tuple[bool, str]:
        if not document.metadata.get("url"):
            return True
        result = super().filter(document)
        return result if result is True else (False, f"url_{result[1]}")
