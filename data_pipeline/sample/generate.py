"""Deterministic generator of the sample corpus and of the planted cases the tests use.

`python -m data_pipeline.sample.generate DIR` writes the sample corpus (JSONL .gz and .zst, a WARC
file) that `configs/data/sample.yaml` reads: English and Chinese prose from small grammars, French,
HTML pages, duplicates (exact, normalized, near, far), spam and malformed lines.
"""

import gzip
import io
import random
import sys
from pathlib import Path

import orjson

NOUNS = """farmer teacher captain neighbour council merchant pilot doctor baker student watchman judge guide
librarian orchestra engineer painter board master grandmother driver committee printer lawyer nurse shepherd poet
gardener mayor bridge letter harvest map newspaper boat road budget noise warehouse report clock market storm
library song pass field school wall garden station photograph bread lecture flower well mine fence fair river
valley forest island harbour castle kitchen window ladder basket engine village theatre hospital factory""".split()
ADJECTIVES = """old young careful quiet famous local clever honest elderly new broken unusual small wooden northern
annual strange empty long heavy public forgotten flooded rare narrow grey cold bright distant busy patient silent
ancient modern gentle proud tired curious hidden crowded muddy sunny frozen golden""".split()
VERBS = """described repaired discovered carried planned measured painted questioned explained visited remembered
collected ordered welcomed followed built opened studied improved watched announced recorded prepared defended
checked delivered protected organized compared gathered cleaned borrowed inspected mentioned praised""".split()
PREPOSITIONS = ["near", "behind", "beside", "across", "inside", "beyond", "under", "above", "around", "towards"]
TIMES = ["before the rain began", "after a long discussion", "in the early morning", "at the end of the week",
         "for the second time", "long after midnight", "during the autumn festival", "on the last day of spring"]
CONNECTIVES = ["Later,", "Meanwhile,", "Nevertheless,", "In the end,", "For this reason,", "Soon afterwards,",
               "At first,", "Surprisingly,", "Of course,", "Even so,"]


def _noun_phrase(rng: random.Random) -> str:
    det = rng.choice(["the", "a", "our", "their", "that", "every", "his", "her"])
    words = [det] + rng.sample(ADJECTIVES, rng.randint(0, 2)) + [rng.choice(NOUNS)]
    return " ".join(words)


ZH_SUBJECTS = ("我们 老师 学生们 这位农民 城市的居民 年轻的工程师 医生 图书馆员 市长 他的朋友 "
               "这家公司 村里的老人 记者 科学家 孩子们").split()
ZH_VERBS = "讨论了 研究了 参观了 记录了 改善了 介绍了 准备了 发现了 修理了 组织了 描述了 保护了".split()
ZH_ADJECTIVES = "古老 新 美丽 安静 重要 热闹 传统 现代 简单 复杂 有名 普通 干净 危险".split()
ZH_NOUNS = ("问题 房子 计划 农业 环境 历史 活动 习惯 石桥 天气 文化 市场 学校 工厂 "
            "森林 河流 医院 图书馆 铁路 公园 报告 故事 技术 政策 节日 音乐 城市 山区").split()
ZH_ADVERBIALS = ["在上个星期", "在公园里", "经过长时间的准备", "在大家的帮助下", "在早上", "在会议结束以后",
                 "为了下一代", "在安静的村子里", "在火车站附近", "在春节之前"]

FR_WORDS = ("le petit village se trouve près de la rivière et les habitants aiment beaucoup leur marché "
            "chaque semaine les enfants vont à l'école pendant que les parents travaillent dans les champs "
            "la ville a construit une nouvelle bibliothèque pour tous les étudiants du quartier").split()


def english_sentence(rng: random.Random) -> str:
    s = f"{_noun_phrase(rng)} {rng.choice(VERBS)} {_noun_phrase(rng)}"
    if rng.random() < 0.6:
        s += f" {rng.choice(PREPOSITIONS)} {_noun_phrase(rng)}"
    if rng.random() < 0.3:
        s += f" {rng.choice(TIMES)}"
    if rng.random() < 0.3:
        s = f"{rng.choice(CONNECTIVES)} {s}"
    if rng.random() < 0.3:
        s += f", and {_noun_phrase(rng)} {rng.choice(VERBS)} {_noun_phrase(rng)}"
    return s[0].upper() + s[1:] + "."


def english_doc(rng: random.Random, paragraphs: int = 6, sentences: int = 4) -> str:
    return "\n".join(" ".join(english_sentence(rng) for _ in range(sentences)) for _ in range(paragraphs))


def chinese_doc(rng: random.Random, paragraphs: int = 5, sentences: int = 5) -> str:
    def noun_phrase():
        return f"{rng.choice(ZH_ADJECTIVES)}的{rng.choice(ZH_NOUNS)}" if rng.random() < 0.7 else rng.choice(ZH_NOUNS)

    def sentence():
        s = f"{rng.choice(ZH_ADVERBIALS)}，{rng.choice(ZH_SUBJECTS)}{rng.choice(ZH_VERBS)}{noun_phrase()}"
        if rng.random() < 0.5:
            s += f"，并且{rng.choice(ZH_VERBS)}{noun_phrase()}和{noun_phrase()}"
        return s + "。"

    return "\n".join("".join(sentence() for _ in range(sentences)) for _ in range(paragraphs))


def french_doc(rng: random.Random, sentences: int = 12) -> str:
    return " ".join(" ".join(rng.sample(FR_WORDS, 12)).capitalize() + "." for _ in range(sentences))


def mixed_doc(rng: random.Random, major: str) -> str:
    """Mostly `major` ("en" or "zh") with one paragraph of the other language."""
    main, minor = (english_doc, chinese_doc) if major == "en" else (chinese_doc, english_doc)
    return main(rng) + "\n" + minor(rng, paragraphs=1, sentences=1)


def edit_words(text: str, rng: random.Random, every: int) -> str:
    """Replaces one word in every `every` (at random positions) by another word; keeps line breaks."""
    lines = [line.split(" ") for line in text.split("\n")]
    flat = [(i, j) for i, line in enumerate(lines) for j in range(len(line))]
    for k in range(0, len(flat), every):
        i, j = flat[min(len(flat) - 1, k + rng.randrange(every))]
        lines[i][j] = rng.choice(["granite", "velvet", "orchard", "lantern", "pepper", "meadow", "copper", "saddle"])
    return "\n".join(" ".join(line) for line in lines)


def normalized_variant(text: str) -> str:
    """Same text after dots.llm1's normalization: case, punctuation and whitespace changed."""
    return "  ".join(text.upper().replace(".", " !").split(" "))


def lorem_ipsum() -> str:
    return ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\n"
            "Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip.")


def repeated_lines(rng: random.Random) -> str:
    line = english_sentence(rng)
    return "\n".join([line] * 12 + [english_sentence(rng) for _ in range(3)])


def keyword_list(rng: random.Random) -> str:
    words = NOUNS + ADJECTIVES
    return "\n".join(", ".join(rng.sample(words, 6)) for _ in range(30))


def navigation_text() -> str:
    return "\n".join(["Home", "About us", "Products", "Contact", "Login", "Sign up", "Privacy", "Terms", "Blog",
                      "Careers", "Help", "Sitemap"] * 2)


def navigation_page() -> str:
    links = "".join(f"<li><a href='/{w.lower()}'>{w}</a></li>" for w in navigation_text().split("\n")[:12])
    return f"<html><head><title>Menu</title></head><body><nav><ul>{links}</ul></nav></body></html>"


def html_page(title: str, body_text: str) -> str:
    paragraphs = "".join(f"<p>{p}</p>" for p in body_text.split("\n"))
    return (f"<html><head><title>{title}</title><script>var x = 1;</script></head><body>"
            f"<nav><a href='/'>Home</a> <a href='/about'>About</a> <a href='/contact'>Contact</a></nav>"
            f"<article><h1>{title}</h1>{paragraphs}</article>"
            f"<footer>Copyright 2024 Example Ltd. All rights reserved.</footer></body></html>")


MALFORMED_LINES = {
    "invalid JSON": b'{"id": "bad-json", "text": "unterminated',
    "invalid UTF-8": b'{"id": "bad-utf8", "text": "caf\xe9 au lait"}',
    "missing text": b'{"id": "no-text", "url": "https://example.org/x"}',
    "empty text": b'{"id": "empty-text", "text": "   "}',
    "non-string text": b'{"id": "int-text", "text": 42}',
    "NUL byte": b'{"id": "nul", "text": "abc\x00def"}',
    "escaped NUL": b'{"id": "nul-escaped", "text": "abc\\u0000def"}',
    "not an object": b'["id", "text"]',
    "oversized": b'{"id": "huge", "text": "' + b"x" * 30000 + b'"}',
}


def jsonl(records: list[dict | bytes]) -> bytes:
    return b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in records)


def write_warc(path: Path, pages: list[tuple[str, str, str]]) -> None:
    """pages: (url, content type, body) → one WARC response record each, after a warcinfo record."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=str(path).endswith(".gz"))
        writer.write_record(writer.create_warcinfo_record(path.name, {"software": "dotsllm sample"}))
        for url, content_type, body in pages:
            headers = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body.encode()),
                                                          http_headers=headers))


def make_sample(out: Path, seed: int = 0) -> None:
    """The sample corpus: 3 files, a few hundred documents, every kind of case the pipeline handles."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(120):
        records.append({"id": f"en-{i:03d}", "url": f"https://news.example.com/{i}", "text": english_doc(rng)})
    for i in range(40):
        records.append({"id": f"zh-{i:03d}", "url": f"https://zh.example.cn/{i}", "text": chinese_doc(rng)})
    for i in range(10):
        base = records[i]["text"]
        records.append({"id": f"en-{i:03d}-copy", "text": base})
        records.append({"id": f"en-{i:03d}-norm", "text": normalized_variant(base)})
        records.append({"id": f"en-{i:03d}-near", "text": edit_words(base, rng, 70)})
    records += [{"id": f"fr-{i}", "text": french_doc(rng)} for i in range(5)]
    records += [{"id": "spam-lorem", "text": lorem_ipsum()}, {"id": "spam-repeat", "text": repeated_lines(rng)},
                {"id": "spam-keywords", "text": keyword_list(rng)}, {"id": "spam-nav", "text": navigation_text()},
                {"id": "blocked-url", "url": "https://pornhub.com/video", "text": english_doc(rng)}]
    rng.shuffle(records)
    (out / "web-00.jsonl.gz").write_bytes(gzip.compress(jsonl(records[:100] + list(MALFORMED_LINES.values())[:5])))
    import zstandard

    html_records = [{"id": f"html-{i:02d}", "url": f"https://blog.example.org/{i}",
                     "html": html_page(f"Post {i}", english_doc(rng))} for i in range(20)]
    rest = records[100:] + html_records + list(MALFORMED_LINES.values())[5:]
    (out / "web-01.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl(rest)))
    html = "text/html; charset=utf-8"
    pages = [(f"https://forum.example.net/t/{i}", html, html_page(f"Thread {i}", english_doc(rng)))
             for i in range(15)]
    pages.append(("https://forum.example.net/logo.png", "image/png", "PNG"))
    write_warc(out / "crawl-00.warc.gz", pages)


if __name__ == "__main__":
    make_sample(Path(sys.argv[1] if len(sys.argv) > 1 else "data_pipeline/sample/corpus"))
