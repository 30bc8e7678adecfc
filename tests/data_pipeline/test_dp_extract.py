"""HTML extraction: main text, and pages that hang or break the extractor rejected with their reason."""

import time

from datatrove.data import Document

from data_pipeline.sample import generate as g
from data_pipeline.steps import extract


def _docs(*htmls):
    return [Document(text=h, id=str(i), metadata={"is_html": True, "source": str(i)}) for i, h in enumerate(htmls)]


def _run(step, docs):
    kept = list(step.run(iter(docs)))
    dropped = {k.removeprefix("dropped_"): v.total for k, v in step.stats.stats.items() if k.startswith("dropped_")}
    return kept, dropped


def test_both_extractors_keep_the_article_and_drop_the_boilerplate():
    text = "First paragraph of the article, long enough to be the main content.\nA second paragraph follows."
    for name in extract.EXTRACTORS:
        kept, _ = _run(extract.HtmlExtractor(name), _docs(g.html_page("Title", text)))
        assert "First paragraph of the article" in kept[0].text and "A second paragraph" in kept[0].text, name
        assert "Copyright" not in kept[0].text and "var x" not in kept[0].text, name


def test_hanging_and_failing_pages_are_rejected_and_the_next_page_is_extracted(monkeypatch):
    def fake(html):
        if html == "hang":
            time.sleep(60)
        if html == "boom":
            raise ValueError("broken page")
        return "text of " + html

    monkeypatch.setitem(extract.EXTRACTORS, "resiliparse", fake)
    start = time.monotonic()
    kept, dropped = _run(extract.HtmlExtractor("resiliparse", timeout=1), _docs("hang", "boom", "ok"))
    assert time.monotonic() - start < 20
    assert [d.text for d in kept] == ["text of ok"]
    assert dropped == {"extraction_timeout": 1, "extraction_error": 1}
